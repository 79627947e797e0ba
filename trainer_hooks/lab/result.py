"""The outcome of a training run: `TrainResult`, JSON-friendly.

What `trainer_hooks.lab.train.train` returns and writes as ``result.json``: the run's settings
that identify it, its losses and validation history, the divergence label of its loss history
(`stabmon.divergence`), and what was done to it on purpose (an injected incident, a switch of
the data distribution), so that a benchmark can measure lead times from the incident's step.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from stabmon.wire import encode_value


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _json_number(x: float | None) -> float | str | None:
    """JSON has no NaN/inf: keep them as the wire's strings."""
    return None if x is None else encode_value(x)


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class TrainResult:
    name: str
    variant: str
    preset: str
    lr: float
    seed: int
    steps: int
    steps_run: int
    final_loss: float
    min_loss: float
    val_loss: float | None
    val_ppl: float | None
    diverged: bool
    """The run's outcome (`stabmon.divergence.label_run` of its losses) is ``diverged``."""
    diverged_at: int | None
    """The divergence's onset when ``diverged``, else None."""
    divergence_reason: str
    stopped_by: str | None
    """``divergence``, ``callback`` or None when the run completed its steps."""
    tokens_per_s: float
    wall_s: float
    num_params: int
    plateau_loss: float | None
    """The unigram plateau the divergence verdict used: ``label_run(losses,
    DivergenceConfig(plateau_loss=plateau_loss))`` reproduces the label fields."""
    outcome: str = "stable"
    """``diverged``, ``transient``, ``stable`` or ``undetermined`` (`stabmon.divergence`)."""
    divergence_kind: str | None = None
    """For a divergence: ``early``, ``blow-up``, ``stall`` or ``late-rise``."""
    onset: int | None = None
    """First step of the excursion the outcome is about (diverged, transient, undetermined)."""
    decision_step: int | None = None
    """For a divergence: the first step at which the definition, online, called it."""
    first_call: int | None = None
    """First step at which the online verdict was ``diverged`` (where ``stop_on_divergence``
    stops), whatever the outcome."""
    incident: dict[str, Any] | None = None
    """The injected incident (`trainer_hooks.lab.incidents.Incident` as a dict), if any."""
    incident_step: int | None = None
    """Where the incident began: the reference for lead times on such a run."""
    data_switch_step: int | None = None
    """The step from which the data distribution was switched, if it was."""
    losses: list[float] = field(repr=False, default_factory=list)
    grad_norms: list[float] = field(repr=False, default_factory=list)
    val_history: list[tuple[int, float]] = field(repr=False, default_factory=list)

    def to_dict(self, history: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not history:
            for k in ("losses", "grad_norms", "val_history"):
                d.pop(k)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = _json_number(v)
        for k in ("losses", "grad_norms"):
            if k in d:
                d[k] = [_json_number(v) for v in d[k]]
        if "val_history" in d:
            d["val_history"] = [[s, _json_number(v)] for s, v in d["val_history"]]
        return d

    def to_json(self, history: bool = False) -> str:
        """Valid JSON (non-finite numbers as "nan"/"inf"/"-inf" strings)."""
        return json.dumps(self.to_dict(history), allow_nan=False)
