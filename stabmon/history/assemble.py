"""Rows as a file holds them -> one clean history: names mapped, restarts, duplicates, gaps.

Logs are not the clean, increasing series a live run streams. A job resumed from a checkpoint
logs the steps after the checkpoint again (a *restart*: the step goes backwards); a logger may
write a step twice; a job that logs every 10 steps leaves gaps; a diverged run logs NaN. Here:

- **restart**: when a series' step goes back to ``s``, the later segment wins: every value at a
  step ``>= s`` logged before the restart, in every series, is dropped (the resumed job's values
  are the truth, as the collector itself treats re-sent steps), and the note says from which step
  to which and how many values went. Detected per series, so tags that a logger interleaves
  slightly out of order across series are not mistaken for a restart;
- **duplicated step**: the same series at the same step again keeps the later value (counted);
- **non-finite values** are kept (they are data, the detector's ``non_finite`` rule reads them)
  and counted per series;
- **gaps** (spacing between logged steps above twice the usual one) are only reported: the
  detector takes sparse steps as they come.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from stabmon.history.model import History, HistoryError, Row
from stabmon.history.names import NameMap
from stabmon.wire import MAX_STEP


def check_step(raw: Any, where: str) -> int:
    """A step from a file: a whole number in [0, 2**53]; a clear error otherwise."""
    if isinstance(raw, bool):
        raise HistoryError(f"{where}: step {raw!r} is not a whole number")
    try:
        step = float(raw) if not isinstance(raw, int) else raw
    except (TypeError, ValueError):
        raise HistoryError(f"{where}: step {raw!r} is not a whole number") from None
    if isinstance(step, float):
        if not step.is_integer():
            raise HistoryError(f"{where}: step {raw!r} is not a whole number")
        step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise HistoryError(f"{where}: step {step} is outside [0, 2**53]")
    return step


def assemble(
    rows: Iterable[Row],
    names: NameMap,
    *,
    name: str,
    source: str,
    fmt: str,
    where: Callable[[Any], str],
    notes: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> History:
    """One :class:`History` from a reader's rows (see the module docstring).

    ``where(loc)`` turns a row's location into ``"file:line"`` text for notes and errors."""
    series: dict[str, dict[int, float]] = {}
    last: dict[str, int] = {}
    restarts: list[str] = []
    duplicates = 0
    first_dup: Any = None
    non_finite: Counter[str] = Counter()
    resolve = names.key
    prefix = f"{source}: "
    for step, values, loc in rows:
        for src, v in values.items():
            key = resolve(src, prefix)
            if key is None:
                continue
            s = series.get(key)
            if s is None:
                s = series[key] = {}
            prev = last.get(key)
            if prev is not None and step <= prev:
                if step == prev:
                    duplicates += 1
                    if first_dup is None:
                        first_dup = loc
                else:
                    dropped = _cut(series, last, step)
                    restarts.append(
                        f"restart at {where(loc)}: {src!r} went back from step {prev} to {step}; kept the "
                        f"later segment and dropped {dropped} earlier values at steps {step}-{prev}"
                    )
            s[step] = v
            last[key] = step
            if v - v != 0.0:  # NaN or inf
                non_finite[key] += 1
    by_step: dict[int, dict[str, float]] = {}
    for key, s in series.items():
        for step, v in s.items():
            row = by_step.get(step)
            if row is None:
                row = by_step[step] = {}
            row[key] = v
    records = sorted(by_step.items())
    if not records:
        raise HistoryError(f"{source}: no numeric series found (nothing to import)")
    out = [*(notes or []), *names.notes(), *restarts]
    if duplicates:
        out.append(
            f"{duplicates} values were logged twice at the same step (first at {where(first_dup)}); "
            "the later value is kept"
        )
    if non_finite:
        out.append(
            "non-finite values kept as data: " + ", ".join(f"{k} {n}" for k, n in sorted(non_finite.items()))
        )
    gap = _gaps([s for s, _ in records])
    if gap:
        out.append(gap)
    return History(
        name=name,
        source=source,
        format=fmt,
        records=records,
        notes=out,
        config=dict(config or {}),
        restarts=len(restarts),
        duplicates=duplicates,
        non_finite=sum(non_finite.values()),
    )


def _cut(series: dict[str, dict[int, float]], last: dict[str, int], step: int) -> int:
    """Drop every value at a step >= ``step`` from every series (they are in step order, so
    from the end); returns how many went."""
    dropped = 0
    for key, s in series.items():
        while s and next(reversed(s)) >= step:
            s.popitem()
            dropped += 1
        if s:
            last[key] = next(reversed(s))
        else:
            last.pop(key, None)
    return dropped


def _gaps(steps: list[int]) -> str | None:
    """A note on spacing between logged steps above twice the usual (median) spacing."""
    if len(steps) < 3:
        return None
    strides = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    usual = statistics.median(strides)
    big = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if b - a > 2 * usual]
    if not big:
        return None
    a, b = max(big, key=lambda p: p[1] - p[0])
    return (
        f"{len(big)} gap{'s' if len(big) > 1 else ''} in the logged steps (usual spacing "
        f"{usual:g}); the largest from step {a} to {b}"
    )


_NON_FINITE_WORDS = frozenset({"nan", "inf", "-inf", "+inf", "infinity", "-infinity", "+infinity"})


def number(v: Any) -> float | None:
    """A JSON value as a measurement: numbers (not bools), and the non-finite words loggers write
    for NaN/inf ("nan", "Infinity", the wire's "-inf"); None for anything else."""
    if v.__class__ is float:
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str) and v.strip().lower() in _NON_FINITE_WORDS:
        return float(v.strip().lower())
    return None
