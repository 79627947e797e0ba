"""Scoring a detector against ground-truth divergence: first alerts, recall, false alarms, leads.

One implementation for everything that judges detection offline: the detection benchmark
(``bench/detection.py``, over the sweep corpus) and ``stabmon backtest`` (over a user's own
runs) both call these functions, so a number in ``docs/detection.md`` and a number a user gets
on their runs mean the same thing.

A run here is anything with a ``name``, its ``records`` (``(step, values)`` in step order, as
the hooks streamed them) and its label: ``diverged_at`` (the first step of the divergence,
None if it did not diverge) and ``decided_at`` (the step at which the divergence definition,
`stabmon.divergence.label_run`, could first tell). Detectors only ever see a prefix:
:func:`first_alerts` streams the records through `stabmon.detect.Detector` step by step and
returns the first alerting step per run. :func:`score` turns those steps into recall (diverging
runs alerted at or before their divergence step), false alarms (non-diverging runs alerted at
all), and lead times (divergence step - alert step); :func:`table` prints them. Detector rules
are independent of each other, so :func:`per_rule_first` evaluates one rule at a time and
:func:`combine` takes the earliest over rules: exact, and it makes a threshold grid search cost
the sum, not the product, of the options per rule. Pure: no I/O, no numpy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stabmon.detect import Detector, DetectorConfig, Finding
from stabmon.detect.config import RULE_FIELDS

Steps = dict[str, int | None]
"""Run name -> first alerting step (None: never alerted)."""


class Replayable(Protocol):
    name: str
    records: Sequence[tuple[int, Mapping[str, Any]]]


class Labelled(Protocol):
    """A labelled run; ``outcome`` (`stabmon.divergence.OUTCOMES`) may be absent, and then
    follows from ``diverged_at`` (diverged or stable)."""

    name: str
    diverged_at: int | None
    decided_at: int | None


def lead_reference(run: Labelled) -> int | None:
    """The step leads (and recall) are measured from: the run's optional ``lead_from`` (the
    known step where an injected incident began), else its divergence onset ``diverged_at``."""
    ref = getattr(run, "lead_from", None)
    return run.diverged_at if ref is None else ref


def wilson_lower(k: int, n: int, z: float = 1.96) -> float | None:
    """The lower end of the Wilson score interval of a proportion ``k / n`` (z = 1.96: 95%);
    None for n = 0. Unlike ``k / n - z * se`` it stays in [0, 1] and is not 0-width at k = n."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


@dataclass(frozen=True)
class FirstFindings:
    """The first finding of any severity and the first critical one of one run (None: none)."""

    first: Finding | None
    critical: Finding | None


def first_findings(detector: Detector, records: Iterable[tuple[int, Mapping[str, Any]]]) -> FirstFindings:
    """Stream ``records`` through a fresh state of ``detector`` until the first critical finding.

    Stops there: nothing later changes the first critical finding, nor the first of any
    severity (which is at or before it)."""
    state = detector.new_state()
    first = critical = None
    for step, values in records:
        for f in detector.observe(state, step, values):
            if first is None:
                first = f
            if f.severity == "critical" and critical is None:
                critical = f
        if critical is not None:
            break
    return FirstFindings(first, critical)


@dataclass(frozen=True)
class FirstAlerts:
    critical: Steps
    warning: Steps
    """First finding of any severity (a critical finding counts as a warning too)."""
    critical_rule: dict[str, str | None]


def first_alerts(runs: Sequence[Replayable], overrides: Mapping[str, Any] | None = None) -> FirstAlerts:
    """Every run's records through a fresh detector state (defaults updated by ``overrides``):
    the first critical and first warning step, and the rule of the first critical finding."""
    det = Detector(DetectorConfig.from_overrides(overrides))
    crit: Steps = {}
    warn: Steps = {}
    rule: dict[str, str | None] = {}
    for run in runs:
        ff = first_findings(det, run.records)
        crit[run.name] = ff.critical.step if ff.critical else None
        warn[run.name] = ff.first.step if ff.first else None
        rule[run.name] = ff.critical.rule if ff.critical else None
    return FirstAlerts(crit, warn, rule)


def only_rule(rule: str, rule_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Overrides that enable ``rule`` alone (with its own ``rule_overrides``)."""
    if rule not in RULE_FIELDS:
        raise ValueError(f"unknown rule {rule!r}; rules are {', '.join(RULE_FIELDS)}")
    out: dict[str, Any] = {r: {"enabled": False} for r in RULE_FIELDS if r != rule}
    out[rule] = dict(rule_overrides or {})
    return out


def per_rule_first(
    runs: Sequence[Replayable], rule: str, rule_overrides: Mapping[str, Any] | None = None
) -> FirstAlerts:
    return first_alerts(runs, only_rule(rule, rule_overrides))


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def combine(parts: Iterable[FirstAlerts]) -> FirstAlerts:
    """The detector's first alerts from its rules' separate first alerts (rules are independent)."""
    crit: Steps = {}
    warn: Steps = {}
    rule: dict[str, str | None] = {}
    for p in parts:
        for name, c in p.critical.items():
            prev = crit.get(name)
            if c is not None and (prev is None or c < prev):
                rule[name] = p.critical_rule.get(name)
            rule.setdefault(name, None)
            crit[name] = _earliest(prev, c)
            warn[name] = _earliest(warn.get(name), p.warning.get(name))
    return FirstAlerts(crit, warn, rule)


def _pct(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (linear interpolation); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def score(runs: Sequence[Labelled], first: Steps) -> dict[str, Any]:
    """Recall, false alarms and lead times of one detector's first alerts over ``runs``.

    - ``recall``: diverging runs alerted at or before their divergence step;
    - ``recall_before_decidable``: ... alerted before the ground truth itself could tell
      (``decided_at``, the label's decision step);
    - ``false_alarms``: stable runs with any alert (a transient run's alerts are counted apart,
      in ``transient_alerted``: neither a false alarm nor a catch; undetermined runs not at all);
    - lead time = divergence step - alert step over the diverging runs alerted at all (negative:
      late), median and 10th percentile, in steps and as a fraction of the steps before divergence.

    A run with a ``lead_from`` step (an injected incident's) has recall and lead measured from
    that step instead of its onset (:func:`lead_reference`); runs without one score as before.
    """
    pos = [r for r in runs if r.diverged_at is not None]
    neg = [r for r in runs if _outcome(r) == "stable"]
    transient = [r for r in runs if _outcome(r) == "transient"]
    alerted = [r for r in pos if first.get(r.name) is not None]
    ref = {r.name: lead_reference(r) for r in pos}
    leads = [ref[r.name] - first[r.name] for r in alerted]
    fracs = [(ref[r.name] - first[r.name]) / max(ref[r.name], 1) for r in alerted]
    early = [r for r in alerted if first[r.name] <= ref[r.name]]
    before_decided = [r for r in alerted if first[r.name] < (r.decided_at if r.decided_at is not None else 0)]
    fa = [r for r in neg if first.get(r.name) is not None]
    return {
        "positives": len(pos),
        "negatives": len(neg),
        "recall": len(early) / len(pos) if pos else None,
        "recall_n": len(early),
        "recall_before_decidable": len(before_decided) / len(pos) if pos else None,
        "alerted_any": len(alerted),
        "false_alarms": len(fa),
        "false_alarm_rate": len(fa) / len(neg) if neg else None,
        "lead_median": statistics.median(leads) if leads else None,
        "lead_p10": _pct(leads, 0.1),
        "lead_frac_median": statistics.median(fracs) if fracs else None,
        "lead_frac_p10": _pct(fracs, 0.1),
        "misses": sorted(r.name for r in pos if first.get(r.name) is None or first[r.name] > ref[r.name]),
        "false_alarm_runs": sorted(r.name for r in fa),
        "transient": len(transient),
        "transient_alerted": sum(first.get(r.name) is not None for r in transient),
        "undetermined": sum(_outcome(r) == "undetermined" for r in runs),
    }


def _outcome(run: Labelled) -> str:
    outcome = getattr(run, "outcome", None)
    if outcome is not None:
        return outcome
    return "diverged" if run.diverged_at is not None else "stable"


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if pct:
        return f"{100 * x:.0f}%"
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The recall / false-alarm / lead table (Markdown), one row per detector's :func:`score`."""
    head = (
        "| detector | recall (alert <= divergence) | before the definition decides | false alarms "
        "| lead median (steps) | lead p10 | lead median (fraction) | lead p10 (fraction) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, s in results.items():
        lines.append(
            f"| {name} | {s['recall_n']}/{s['positives']} ({_fmt(s['recall'], True)}) "
            f"| {_fmt(s['recall_before_decidable'], True)} | {s['false_alarms']}/{s['negatives']} "
            f"| {_fmt(s['lead_median'])} | {_fmt(s['lead_p10'])} "
            f"| {_fmt(s['lead_frac_median'], True)} | {_fmt(s['lead_frac_p10'], True)} |"
        )
    return head + "\n".join(lines) + "\n"
