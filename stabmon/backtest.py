"""A detector setting judged on a user's own runs, offline: ``stabmon backtest``'s library.

Each run's history (`stabmon.history`) goes through the pure detector (`stabmon.detect`) exactly
as the collector would feed it live, step by step, with the built-in defaults updated by the
user's ``--set`` overrides. Per run the report gives the first finding of any severity and the
first critical one, each with its message and evidence. Where runs are labelled, by the user
(``--diverged RUN=STEP``, or ``RUN=no``) or by the divergence definition
(`stabmon.divergence.label_run` over the run's ``loss``), it scores the setting with the
detection benchmark's own code (`stabmon.scoring`): recall, false alarms and lead times, and the
same table. A run with neither a mark nor a loss series is reported but not scored.

The divergence definition counts in logged points: its windows (a 5-point median, 25 points of
patience) are steps only for a run that logged every step; for one that logged every 10 steps
they span 10 times as many. Its verdict is mapped back to the logged step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stabmon.detect import Detector, DetectorConfig, Finding
from stabmon.divergence import label_run
from stabmon.history import History
from stabmon.scoring import first_alerts, first_findings, score, table


@dataclass
class Judged:
    """One run as the backtest sees it: its records, its label, the setting's first findings."""

    name: str
    source: str
    records: list[tuple[int, dict[str, float]]] = field(repr=False)
    diverged_at: int | None = None
    decided_at: int | None = None
    label: str = "unlabelled"
    """``marked`` (by the user), ``divergence definition``, or ``unlabelled``."""
    outcome: str | None = None
    """The divergence definition's outcome (``diverged``, ``transient``, ``stable``,
    ``undetermined``); None for marked or unlabelled runs (scored by ``diverged_at`` alone)."""
    reason: str = ""
    first: Finding | None = None
    critical: Finding | None = None

    @property
    def lead(self) -> int | None:
        """Divergence step - first critical step (negative: late); None if either is missing."""
        if self.diverged_at is None or self.critical is None:
            return None
        return self.diverged_at - self.critical.step


def parse_marks(items: Sequence[str]) -> dict[str, int | None]:
    """``["run-a=1200", "run-b=no"]`` -> ``{"run-a": 1200, "run-b": None}``."""
    out: dict[str, int | None] = {}
    for item in items:
        run, eq, raw = item.rpartition("=")
        raw = raw.strip().lower()
        if not eq or not run:
            raise ValueError(f"--diverged {item!r}: expected RUN=STEP (or RUN=no)")
        if raw in ("no", "none", "false", "-"):
            out[run] = None
        elif raw.isdigit():
            out[run] = int(raw)
        else:
            raise ValueError(f"--diverged {item!r}: {raw!r} is not a step (a whole number) or 'no'")
    return out


def label(history: History, marks: Mapping[str, int | None], auto: bool = True) -> Judged:
    """The run with its label: the user's mark, else the divergence definition (``auto``), else
    not diverged when ``auto`` is off (the user marked the ones that did)."""
    run = Judged(history.name, history.source, history.records)
    if history.name in marks:
        run.diverged_at = run.decided_at = marks[history.name]
        run.label, run.reason = "marked", "marked by --diverged"
        return run
    if not auto:
        run.label, run.reason = "marked", "not marked as diverged"
        return run
    steps, losses = history.series("loss")
    if not losses:
        run.reason = "no loss series to label it by; mark it with --diverged"
        return run
    verdict = label_run(losses)
    run.label, run.outcome = "divergence definition", verdict.outcome
    if verdict.diverged:
        run.diverged_at, run.decided_at = steps[verdict.onset], steps[verdict.decision_step]
        run.reason = f"{verdict.kind}: {verdict.reason}"
    else:
        run.reason = f"{verdict.outcome}: {verdict.reason}" if verdict.reason else verdict.outcome
    return run


def backtest(
    histories: Sequence[History],
    overrides: Mapping[str, Any] | None = None,
    marks: Mapping[str, int | None] | None = None,
    auto_label: bool = True,
) -> dict[str, Any]:
    """Replay every history through the detector with ``overrides``; the JSON-able report."""
    marks = dict(marks or {})
    unknown = sorted(set(marks) - {h.name for h in histories})
    if unknown:
        raise ValueError(
            f"--diverged names runs that are not among the paths: {', '.join(unknown)} "
            f"(runs: {', '.join(h.name for h in histories)})"
        )
    detector = Detector(DetectorConfig.from_overrides(overrides))
    runs = [label(h, marks, auto_label) for h in histories]
    for run in runs:
        ff = first_findings(detector, run.records)
        run.first, run.critical = ff.first, ff.critical
    scored = [r for r in runs if r.label != "unlabelled"]
    title = "with --set" if overrides else "defaults"
    results = {
        f"stabmon critical ({title})": score(scored, {r.name: _step(r.critical) for r in scored}),
        f"stabmon any alert ({title})": score(scored, {r.name: _step(r.first) for r in scored}),
    }
    if overrides:
        results["stabmon critical (defaults)"] = score(scored, first_alerts(scored).critical)
    return {
        "overrides": dict(overrides or {}),
        "runs": [_run_dict(r) for r in runs],
        "scored_runs": len(scored),
        "scores": results if scored else {},
        "table": table(results) if scored else "",
    }


def _step(f: Finding | None) -> int | None:
    return f.step if f is not None else None


def _run_dict(r: Judged) -> dict[str, Any]:
    return {
        "name": r.name,
        "source": r.source,
        "steps": len(r.records),
        "last_step": r.records[-1][0] if r.records else None,
        "label": r.label,
        "outcome": r.outcome,
        "diverged_at": r.diverged_at,
        "decided_at": r.decided_at,
        "reason": r.reason,
        "first_alert": r.first.to_dict() if r.first else None,
        "first_critical": r.critical.to_dict() if r.critical else None,
        "lead": r.lead,
    }
