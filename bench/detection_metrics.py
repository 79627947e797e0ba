"""The detection benchmark's runs: the sweep corpus loaded and labelled, and the reference rules.

A :class:`Run` is one recorded training run of the sweep corpus: its per-step records (as the
hooks streamed them), its loss and grad-norm history, its sweep coordinates and its label,
`stabmon.divergence.label_run` over the *full* loss history (outcome, kind, onset, decision
step). Detectors only ever see a prefix: :func:`ours` streams the records through
`stabmon.detect.Detector` step by step, :func:`reference` streams (loss, grad norm) through a
reference rule, and each returns the first alerting step per run. The scoring itself
(:func:`score`, :func:`combine`, :func:`per_rule_first`, the table) lives in `stabmon.scoring`,
shared with ``stabmon backtest``, and is re-exported here.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabmon.divergence import DivergenceConfig, label_run
from stabmon.scoring import (  # noqa: F401 - the benchmark's scoring API, re-exported
    FirstAlerts,
    Steps,
    combine,
    first_alerts,
    only_rule,
    per_rule_first,
    score,
)
from stabmon.wire import decode_value


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
    mechanism: str | None = None
    """Corpus v2 (`bench.corpus_v2`): the mechanism the run was built to show, ``control`` for a
    matched stable control; None for the LR-range grids."""
    incident_step: int | None = None
    """The step an injected incident (or a data switch) began; None where nothing was injected."""
    control_of: tuple[str, ...] = ()
    """The mechanisms a control run is the matched stable run of."""

    @property
    def lead_from(self) -> int | None:
        """Leads and recall are measured from the incident's step when there is one
        (`stabmon.scoring.lead_reference`), the label's onset otherwise."""
        return self.incident_step

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
        mechanism=d.get("mechanism"),
        incident_step=d.get("incident_step"),
        control_of=tuple(d.get("control_of") or ()),
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


def ours(runs: Sequence[Run], overrides: Mapping[str, Any] | None = None) -> FirstAlerts:
    """Stream every run's records through a fresh detector state; first critical/warning steps."""
    return first_alerts(runs, overrides)


def reference(runs: Sequence[Run], make: Callable[[Run], Any]) -> Steps:
    """First alert step per run of a reference rule (`bench.reference_detectors`)."""
    from bench.reference_detectors import first_alert

    out: Steps = {}
    for run in runs:
        alert = first_alert(make(run), run.losses, run.grad_norms)
        out[run.name] = alert.step if alert else None
    return out
