"""Scoring detectors against ground-truth divergence on recorded runs (the detection benchmark's core).

A :class:`Run` is one recorded training run: its per-step records (as the hooks streamed them),
its loss and grad-norm history and its label, `stabmon.divergence.label_run` over the
*full* loss history. Detectors only ever see a prefix: :func:`ours` streams the records through
`stabmon.detect.Detector` step by step, :func:`reference` streams (loss, grad norm) through a
reference rule, and each returns the first alerting step per run. :func:`score` turns those
steps into recall (diverging runs alerted at or before their divergence step), false alarms
(non-diverging runs alerted at all), and lead times (divergence step - alert step). Detector
rules are independent of each other, so :func:`per_rule_first` evaluates one rule at a time and
:func:`combine` takes the earliest over rules: exact, and it makes a threshold grid search cost
the sum, not the product, of the options per rule.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabmon.detect import Detector, DetectorConfig
from stabmon.detect.config import RULE_FIELDS
from stabmon.divergence import DivergenceConfig, label_run
from stabmon.wire import decode_value

Steps = dict[str, int | None]
"""Run name -> first alerting step (None: never alerted)."""


@dataclass
class Run:
    name: str
    variant: str
    lr: float
    seed: int
    warmup: int
    steps: int
    losses: list[float]
    grad_norms: list[float]
    records: list[tuple[int, dict[str, float]]] = field(repr=False)
    plateau_loss: float | None = None
    diverged_at: int | None = None
    """Ground truth: the first step of the divergence (None: the run did not diverge)."""
    decided_at: int | None = None
    """The step at which the divergence definition could first tell (>= ``diverged_at``)."""
    reason: str = ""
    final_loss: float | None = None
    val_loss: float | None = None
    outcome: str | None = None
    """The label's outcome (`stabmon.divergence.OUTCOMES`); None: diverged or stable, from
    ``diverged_at``. Transient and undetermined runs are neither positives nor negatives."""
    kind: str | None = None
    """The divergence's kind (`stabmon.divergence.KINDS`)."""

    def __post_init__(self) -> None:
        if self.outcome is None:
            self.outcome = "diverged" if self.diverged_at is not None else "stable"

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def _num(v: Any) -> float:
    return decode_value(v) if isinstance(v, str) else float(v)


def load_run(result_json: str | Path) -> Run:
    """A run from a sweep cell's result JSON and the series file beside it, labelled from its loss."""
    from trainer_hooks.client.sinks import iter_jsonl  # no torch: sinks import only the wire module

    path = Path(result_json)
    d = json.loads(path.read_text())
    losses = [_num(v) for v in d["losses"]]
    records = [(r["step"], r["values"]) for r in iter_jsonl(path.with_suffix(".jsonl"))]
    label = label_run(losses, DivergenceConfig(plateau_loss=d.get("plateau_loss")))
    div = label.to_divergence()
    return Run(
        name=d["name"],
        variant=d["variant"],
        lr=d["lr"],
        seed=d["seed"],
        warmup=d["warmup"],
        steps=d["steps"],
        losses=losses,
        grad_norms=[_num(v) for v in d["grad_norms"]],
        records=records,
        plateau_loss=d.get("plateau_loss"),
        diverged_at=div.step,
        decided_at=div.detected_at,
        reason=div.reason if div.diverged else "",
        final_loss=d.get("final_loss"),
        val_loss=d.get("val_loss"),
        outcome=label.outcome,
        kind=label.kind,
    )


def load_runs(dirs: Iterable[str | Path]) -> list[Run]:
    """Every finished cell (``runs/*.json``) of the given sweep directories, sorted by name."""
    paths = sorted(p for d in dirs for p in (Path(d) / "runs").glob("*.json"))
    return sorted((load_run(p) for p in paths), key=lambda r: r.name)


def ended_on_plateau(run: Run, tail: int = 20) -> bool:
    """Outcome view (not the ground truth): the median of the run's last ``tail`` losses is no
    better than the unigram plateau's lower edge, i.e. the run ended no better than a predictor
    that ignores context. Non-finite losses count as failed."""
    if run.plateau_loss is None:
        return False
    last = run.losses[-tail:]
    if any(not math.isfinite(v) for v in last):
        return True
    return statistics.median(last) >= run.plateau_loss - DivergenceConfig().plateau_margin


@dataclass(frozen=True)
class FirstAlerts:
    critical: Steps
    warning: Steps
    """First finding of any severity (a critical finding counts as a warning too)."""
    critical_rule: dict[str, str | None]


def ours(runs: Sequence[Run], overrides: Mapping[str, Any] | None = None) -> FirstAlerts:
    """Stream every run's records through a fresh detector state; first critical/warning steps."""
    det = Detector(DetectorConfig.from_overrides(overrides))
    crit: Steps = {}
    warn: Steps = {}
    rule: dict[str, str | None] = {}
    for run in runs:
        state = det.new_state()
        c = w = None
        r = None
        for step, values in run.records:
            for f in det.observe(state, step, values):
                if w is None:
                    w = step
                if f.severity == "critical" and c is None:
                    c, r = step, f.rule
            if c is not None:
                break  # nothing later changes the first critical (or the first warning)
        crit[run.name], warn[run.name], rule[run.name] = c, w, r
    return FirstAlerts(crit, warn, rule)


def only_rule(rule: str, rule_overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Overrides that enable ``rule`` alone (with its own ``rule_overrides``)."""
    if rule not in RULE_FIELDS:
        raise ValueError(f"unknown rule {rule!r}; rules are {', '.join(RULE_FIELDS)}")
    out: dict[str, Any] = {r: {"enabled": False} for r in RULE_FIELDS if r != rule}
    out[rule] = dict(rule_overrides or {})
    return out


def per_rule_first(
    runs: Sequence[Run], rule: str, rule_overrides: Mapping[str, Any] | None = None
) -> FirstAlerts:
    return ours(runs, only_rule(rule, rule_overrides))


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


def reference(runs: Sequence[Run], make: Callable[[Run], Any]) -> Steps:
    """First alert step per run of a reference rule (`bench.reference_detectors`)."""
    from bench.reference_detectors import first_alert

    out: Steps = {}
    for run in runs:
        alert = first_alert(make(run), run.losses, run.grad_norms)
        out[run.name] = alert.step if alert else None
    return out


def _pct(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (linear interpolation); None for no values."""
    if not values:
        return None
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def score(runs: Sequence[Run], first: Steps) -> dict[str, Any]:
    """Recall, false alarms and lead times of one detector's first alerts over ``runs``.

    - ``recall``: diverging runs alerted at or before their divergence step;
    - ``recall_before_decidable``: ... alerted before the ground truth itself could tell
      (``decided_at``, the step at which `find_divergence` fires online);
    - ``false_alarms``: stable runs with any alert (a transient run's alerts are counted apart,
      in ``transient_alerted``: neither a false alarm nor a catch; undetermined runs not at all);
    - lead time = divergence step - alert step over the diverging runs alerted at all (negative:
      late), median and 10th percentile, in steps and as a fraction of the steps before divergence.
    """
    pos = [r for r in runs if r.diverged]
    neg = [r for r in runs if r.outcome == "stable"]
    transient = [r for r in runs if r.outcome == "transient"]
    alerted = [r for r in pos if first.get(r.name) is not None]
    leads = [r.diverged_at - first[r.name] for r in alerted]
    fracs = [(r.diverged_at - first[r.name]) / max(r.diverged_at, 1) for r in alerted]
    early = [r for r in alerted if first[r.name] <= r.diverged_at]
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
        "misses": sorted(r.name for r in pos if first.get(r.name) is None or first[r.name] > r.diverged_at),
        "false_alarm_runs": sorted(r.name for r in fa),
        "transient": len(transient),
        "transient_alerted": sum(first.get(r.name) is not None for r in transient),
        "undetermined": sum(r.outcome == "undetermined" for r in runs),
    }
