"""The definition of divergence: when has a training run, judged by its loss alone, diverged?

stabmon's experiments, its detector benchmark and the trainer's ``stop_on_divergence`` all use
this one definition as ground truth, offline (`find_divergence` over a recorded loss history)
and online (`DivergenceTracker`, fed one loss per step). Both run the same core, so the online
tracker reports exactly the step the offline function would, at the first step where that is
decidable. A run has diverged at step ``i`` (an index into the loss history) when either:

1. **non-finite**: the loss at ``i`` is NaN or infinite. Nothing recovers from NaN weights.
2. **sustained excursion**: a robust smoothing of the loss, the median of the last ``window``
   finite losses, rises above the running minimum of that smoothed loss by more than
   ``max(abs_margin, rel_margin * running_min)`` and stays above it for ``patience``
   consecutive steps. ``i`` is the first step of that excursion: the earliest raw loss above the
   threshold within the median window where the smoothed loss first crossed it. The median
   ignores isolated spikes outright, and the patience lets a short burst that recovers pass,
   so only a loss that blows up *and stays up* counts; a run that blows up and then stalls far
   above its best loss is diverged, whether or not it ever produces a NaN.
3. **blow-up from a good state to a plateau**: the smoothed loss rises above
   ``initial + blowup_margin`` (worse than the untrained model, whose loss is the first one)
   at some step ``i`` (its excursion starts there, as in 2) and the run never again gets below
   ``running_min + margin`` for ``patience`` steps... is covered by 2; a blow-up that happens
   before the run has learned anything is covered by 3 proper: a smoothed loss above
   ``initial + blowup_margin`` for ``blowup_patience`` steps means the weights were wrecked
   (the loss is worse than predicting bytes uniformly at random from the initialisation),
   and the run is diverged at the start of that excursion even if it later settles lower.

The last rule catches the high-learning-rate failure seen at small scale: a baseline run at
LR 0.1 spiked to 18 nats at step 3, then stalled near 3.2 (the byte-unigram plateau, i.e. the
network collapsed to predicting byte frequencies) while stable runs reach ~2.5. Because the
spike happens before the loss has come down, its running minimum is still the initial loss and
rule 2 alone would call the later, lower plateau a recovery.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class DivergenceConfig:
    window: int = 5
    """Steps in the rolling median; isolated spikes shorter than half of it vanish."""
    abs_margin: float = 0.3
    """Nats above the running minimum of the smoothed loss that count as an excursion ..."""
    rel_margin: float = 0.1
    """... or this fraction of the running minimum, whichever is larger."""
    patience: int = 25
    """Consecutive smoothed steps above the threshold before an excursion is divergence."""
    blowup_margin: float = 1.0
    """Nats above the initial (untrained) loss that count as a blow-up."""
    blowup_patience: int = 5
    """Consecutive smoothed steps above ``initial + blowup_margin`` that count as divergence."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.patience < 1 or self.blowup_patience < 1:
            raise ValueError("window, patience and blowup_patience must be >= 1")
        if self.abs_margin < 0 or self.rel_margin < 0 or self.blowup_margin < 0:
            raise ValueError("margins must be >= 0")

    def margin(self, running_min: float) -> float:
        return max(self.abs_margin, self.rel_margin * abs(running_min))


@dataclass(frozen=True)
class Divergence:
    diverged: bool
    step: int | None = None
    """Index into the loss history of the first step of the divergence; None if not diverged."""
    reason: str = ""
    detected_at: int | None = None
    """Index of the step at which the definition became decidable (>= ``step``)."""


NOT_DIVERGED = Divergence(False, None, "no divergence")


class _Excursion:
    """Counts consecutive smoothed steps above a threshold and remembers where the run started."""

    def __init__(self) -> None:
        self.start: int | None = None
        self.length = 0

    def update(self, above: bool, start_if_new: int) -> None:
        if above:
            if self.length == 0:
                self.start = start_if_new
            self.length += 1
        else:
            self.start, self.length = None, 0


class DivergenceTracker:
    """Online divergence: feed one loss per step with `update`; returns the `Divergence` once it
    is decidable (and the same one on every later call), None before."""

    def __init__(self, config: DivergenceConfig | None = None) -> None:
        self.config = config or DivergenceConfig()
        self.reset()

    def reset(self) -> None:
        self.step = -1
        self.initial: float | None = None
        self.recent: deque[tuple[int, float]] = deque(maxlen=self.config.window)
        self.running_min = math.inf
        self.excursion = _Excursion()
        self.blowup = _Excursion()
        self.result: Divergence | None = None

    @property
    def diverged(self) -> bool:
        return self.result is not None

    def _first_above(self, threshold: float) -> int:
        """The earliest step in the median window whose raw loss is above ``threshold``."""
        return next(i for i, v in self.recent if v > threshold)

    def update(self, loss: float) -> Divergence | None:
        self.step += 1
        if self.result is not None:
            return self.result
        cfg = self.config
        loss = float(loss)
        if not math.isfinite(loss):
            self.result = Divergence(
                True, self.step, f"non-finite loss ({loss}) at step {self.step}", self.step
            )
            return self.result
        if self.initial is None:
            self.initial = loss
        self.recent.append((self.step, loss))
        smoothed = median(v for _, v in self.recent)

        # Rule 3: worse than the untrained model, for a few smoothed steps.
        blowup_at = self.initial + cfg.blowup_margin
        above = smoothed > blowup_at
        self.blowup.update(above, self._first_above(blowup_at) if above else -1)
        if self.blowup.length >= cfg.blowup_patience:
            self.result = Divergence(
                True,
                self.blowup.start,
                f"loss blew up above the initial loss {self.initial:.4g} + {cfg.blowup_margin:g} "
                f"(smoothed {smoothed:.4g}) from step {self.blowup.start}",
                self.step,
            )
            return self.result

        # Rule 2: a sustained excursion above the running minimum of the smoothed loss.
        threshold = self.running_min + cfg.margin(self.running_min)
        above = smoothed > threshold
        self.excursion.update(above, self._first_above(threshold) if above else -1)
        if self.excursion.length >= cfg.patience:
            self.result = Divergence(
                True,
                self.excursion.start,
                f"smoothed loss stayed above its running minimum {self.running_min:.4g} + "
                f"{cfg.margin(self.running_min):.3g} for {cfg.patience} steps from step "
                f"{self.excursion.start} (now {smoothed:.4g})",
                self.step,
            )
            return self.result
        self.running_min = min(self.running_min, smoothed)
        return None

    def extend(self, losses: Iterable[float]) -> Divergence | None:
        result = None
        for loss in losses:
            result = self.update(loss)
        return result


def find_divergence(losses: Sequence[float], config: DivergenceConfig | None = None) -> Divergence:
    """Offline divergence over a whole loss history (see the module docstring)."""
    tracker = DivergenceTracker(config)
    result = tracker.extend(losses)
    return result if result is not None else NOT_DIVERGED
