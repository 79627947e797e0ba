"""The vocabulary of the divergence definition: its settings and its verdicts.

`stabmon.divergence` holds the definition itself (read its docstring first); this module holds
what callers pass in and get back, so that the definition's code stays short. A `RunLabel` is
the end-of-run verdict on a loss history (an outcome, a kind, an onset and the decision step);
`Divergence` is the older, two-valued view of it that existing callers read
(``diverged``/``step``/``detected_at``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

DIVERGED = "diverged"
TRANSIENT = "transient"
STABLE = "stable"
UNDETERMINED = "undetermined"
OUTCOMES = (DIVERGED, TRANSIENT, STABLE, UNDETERMINED)
"""Every run gets exactly one of these."""

EARLY = "early"
BLOW_UP = "blow-up"
STALL = "stall"
LATE_RISE = "late-rise"
KINDS = (EARLY, BLOW_UP, STALL, LATE_RISE)
"""The kind of a divergence, in the order they are tested (the first that applies wins)."""


@dataclass(frozen=True)
class DivergenceConfig:
    window: int = 5
    """Steps in the rolling median (the smoothed loss); isolated spikes shorter than half of it
    vanish, so a single bad batch never opens an excursion."""
    end_window: int = 20
    """Steps in the median that says where the run *ends* (the end level): long enough that one
    step's noise (~0.05-0.1 nats at these scales) does not decide an outcome."""
    abs_margin: float = 0.3
    """Nats above the pre-onset minimum (the lowest end level so far) that open an excursion ..."""
    rel_margin: float = 0.1
    """... or this fraction of that minimum, whichever is larger."""
    excursion_patience: int = 10
    """Consecutive smoothed steps above the threshold before a rise counts as an excursion,
    unless it passes the blow-up level first. Shorter rises are noise or spikes: on the ``tiny``
    corpus (batches of 512 bytes, +-0.2 nats from batch to batch) the 5-step median wanders 0.3
    nats above the run's level on noise alone, in ~1 run in 3, for a few steps at a time."""
    recover_fraction: float = 0.5
    """An excursion is worked off when the smoothed loss comes back within this fraction of the
    margin above the pre-onset minimum (hysteresis: a run hovering at the threshold neither
    opens nor closes excursions at every step)."""
    blowup_margin: float = 1.0
    """An excursion whose smoothed peak is this many nats above the initial (untrained) loss
    is a blow-up: the weights left the basin they were in."""
    plateau_loss: float | None = None
    """The loss of the byte-unigram predictor of the training data; None disables stalls."""
    plateau_margin: float = 0.25
    """Nats either side of ``plateau_loss`` that count as sitting on the plateau."""
    edge_margin: float = 0.05
    """A run ending within this many nats of the plateau's lower edge is undetermined: on a
    different CPU it may end on the other side."""
    settle_steps: int = 100
    """A divergence whose onset lies in the last this-many steps is undetermined: the run has
    not had the time the QK-normalised runs needed to work off their excursions."""
    early_steps: int = 20
    """Divergences with an onset before this step are of kind ``early``: nothing precedes them."""

    def __post_init__(self) -> None:
        if min(self.window, self.end_window, self.settle_steps, self.excursion_patience) < 1:
            raise ValueError("window, end_window, settle_steps and excursion_patience must be >= 1")
        if self.early_steps < 0:
            raise ValueError(f"early_steps must be >= 0, got {self.early_steps}")
        if self.plateau_loss is not None and not math.isfinite(self.plateau_loss):
            raise ValueError(f"plateau_loss must be finite, got {self.plateau_loss}")
        margins = (
            self.abs_margin,
            self.rel_margin,
            self.blowup_margin,
            self.plateau_margin,
            self.edge_margin,
        )
        if min(margins) < 0:
            raise ValueError("margins must be >= 0")
        if not 0.0 <= self.recover_fraction < 1.0:
            raise ValueError(f"recover_fraction must be in [0, 1), got {self.recover_fraction}")

    def margin(self, running_min: float) -> float:
        """How far above its minimum the smoothed loss must rise to open an excursion."""
        return max(self.abs_margin, self.rel_margin * abs(running_min))

    def recovery_level(self, running_min: float) -> float:
        """The smoothed loss at which an excursion from ``running_min`` is worked off."""
        return running_min + self.recover_fraction * self.margin(running_min)

    @property
    def plateau_low(self) -> float | None:
        """The plateau band's lower edge: a run ending at or above it learned nothing of context."""
        return None if self.plateau_loss is None else self.plateau_loss - self.plateau_margin

    @property
    def plateau_high(self) -> float | None:
        return None if self.plateau_loss is None else self.plateau_loss + self.plateau_margin


@dataclass(frozen=True)
class Divergence:
    """The two-valued view of a `RunLabel` (``diverged`` or not), for callers that need no more."""

    diverged: bool
    step: int | None = None
    """The onset (index into the loss history) of the divergence; None if not diverged."""
    reason: str = ""
    detected_at: int | None = None
    """The decision step: where the definition, run online, first called it (>= ``step``)."""


@dataclass(frozen=True)
class RunLabel:
    """The verdict on a loss history, as if the run ended at its last step."""

    outcome: str
    """One of `OUTCOMES`."""
    kind: str | None = None
    """For ``diverged``: one of `KINDS`; None otherwise."""
    onset: int | None = None
    """The first step of the excursion (or stall) the outcome is about: for ``diverged`` the
    divergence, for ``transient`` the largest excursion worked off, for ``undetermined`` the
    episode that cannot be judged yet (None when it is the end level that is ambiguous)."""
    decision_step: int | None = None
    """For ``diverged``: the first step at which the verdict on the prefix seen so far was
    already ``diverged`` with this onset (what a loss-based stop acting then would do)."""
    first_call: int | None = None
    """The first step at which the verdict on the prefix was ``diverged``, whatever the outcome:
    where ``stop_on_divergence`` stops. On a ``transient`` or ``stable`` run it is a stop the
    run would have been wrong to take."""
    reason: str = ""
    steps: int = 0
    """Length of the loss history judged."""
    end_loss: float | None = None
    """The end level: median of the last ``end_window`` finite losses."""
    peak_loss: float | None = None
    """The highest smoothed loss of the episode the outcome is about (None: no episode)."""
    excursions: int = 0
    """Excursions the run worked off."""

    @property
    def diverged(self) -> bool:
        return self.outcome == DIVERGED

    def to_divergence(self) -> Divergence:
        if self.diverged:
            return Divergence(True, self.onset, self.reason, self.decision_step)
        return Divergence(False, None, self.reason, None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
