"""The definition of divergence: when has a training run, judged by its loss alone, diverged?

stabmon's experiments, its detector benchmark and the trainer's ``stop_on_divergence`` all use
this one definition as ground truth, offline (`find_divergence` over a recorded loss history)
and online (`DivergenceTracker`, fed one loss per step). Both run the same core, so the online
tracker reports exactly the step the offline function would, at the first step where that is
decidable. A run has diverged at step ``i`` (an index into the loss history) when any of:

1. **non-finite**: the loss at ``i`` is NaN or infinite. Nothing recovers from NaN weights.
2. **blow-up without recovery**: the smoothed loss, the median of the last ``window`` finite
   losses, is above ``initial + blowup_margin`` for ``blowup_patience`` consecutive steps, where
   ``initial`` is the first loss (the untrained model's, ~ln 256 for bytes), *and* the run does not
   get back within ``recover_patience`` steps of the blow-up's first step. Getting back means the
   smoothed loss returns to the level the run had reached before the blow-up (its running minimum
   plus the rule-3 margin) and, when ``plateau_loss`` is known, below the plateau band
   (``plateau_loss - plateau_margin``): the model learns from context again. A model that is worse
   than its own random initialisation by a nat has had its weights thrown out of the basin it was
   in; most such runs end on a plateau far above the stable loss (the byte-unigram plateau near
   3.2 nats at this scale) even when they later produce finite, lower losses: that is the
   "blow-up followed by a stall" failure. But a QK-normalised model at a high LR without warmup
   can blow up in its first steps and then train as well as any run (measured on the ``tiny``
   detection corpus: 11 of the 28 early blow-ups got below the plateau band within 150 steps and
   ended at 2.6 to 3.1 nats). Those runs did not diverge, and calling them diverged would make the
   ground truth reward paging on runs that heal.
3. **sustained excursion**: the smoothed loss rises above the running minimum of the smoothed
   loss by more than ``max(abs_margin, rel_margin * running_min)`` and stays above it for
   ``patience`` consecutive steps: the run got worse than it had been and did not come back.
4. **plateau stall** (only when ``plateau_loss`` is given): once the smoothed loss has come
   down to the plateau band (``plateau_loss + plateau_margin``), it stays on or above the band's
   lower edge (``plateau_loss - plateau_margin``) for ``plateau_patience`` consecutive steps; ``i``
   is the first of them. Bursts above the band during the stall do not restart the count: a run
   that oscillates between the plateau and worse has not learned anything either (measured on
   the ``tiny`` corpus: baseline runs at LR 0.3-0.5 sat in the band for 94-135 steps at a time,
   broken by such bursts, and ended at 3.2-3.3 nats without ever getting below the band).
   ``plateau_loss`` is the loss of the best context-free predictor of the data,
   the entropy of its byte-unigram distribution (`trainer_hooks.lab.data.ByteCorpus.unigram_entropy`,
   3.25 nats for the built-in corpus; the trainer fills it in). This is the measured high-LR
   failure at small scale: a baseline run at LR 0.1-0.3 blows up or oscillates in its first
   steps, then sits on the unigram plateau (~3.2-3.4 nats) for hundreds of steps, having
   learned nothing about context, while stable runs pass that level within ~40 steps and go
   on to ~2.5. Its loss neither goes non-finite nor rises above its own minimum, so rules 1-3
   cannot see it; the plateau gives the definition the reference it needs.

In rules 2 and 3, ``i`` is the first step of the excursion: the earliest raw loss above the
threshold within the median window where the smoothed loss first crossed it. The median
ignores isolated spikes outright (a spike must cover most of the window to move it) and the
patience lets a short burst that recovers pass, so only a loss that blows up *and stays up*
counts. A run that is merely slower than another is not diverged: divergence is judged on the
run's own history (and the data's plateau), never against a reference run.
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
    """Consecutive smoothed steps above ``initial + blowup_margin`` that count as divergence. A
    blow-up of k >= window // 2 + 1 consecutive raw steps keeps the median above for k steps."""
    recover_patience: int = 150
    """Steps from a blow-up's first step within which the run must get back (see rule 2) for the
    blow-up not to count as divergence. A blow-up that lasts ``patience`` steps is divergence by
    rule 3 anyway; this decides the ones that come down at once but may never learn again."""

    plateau_loss: float | None = None
    """The loss of the byte-unigram predictor of the training data; None disables rule 4."""
    plateau_margin: float = 0.25
    """Nats either side of ``plateau_loss`` that count as sitting on the plateau."""
    plateau_patience: int = 150
    """Consecutive smoothed steps on the plateau that count as divergence. Stable runs cross the
    plateau band in a few dozen steps; a stalled one stays for hundreds."""

    def __post_init__(self) -> None:
        patiences = (
            self.window,
            self.patience,
            self.blowup_patience,
            self.plateau_patience,
            self.recover_patience,
        )
        if min(patiences) < 1:
            raise ValueError(
                "window, patience, blowup_patience, plateau_patience and recover_patience must be >= 1"
            )
        if self.plateau_loss is not None and not math.isfinite(self.plateau_loss):
            raise ValueError(f"plateau_loss must be finite, got {self.plateau_loss}")
        if min(self.abs_margin, self.rel_margin, self.blowup_margin, self.plateau_margin) < 0:
            raise ValueError("margins must be >= 0")

    def margin(self, running_min: float) -> float:
        return max(self.abs_margin, self.rel_margin * abs(running_min))

    def recovery_level(self, running_min: float) -> float:
        """The smoothed loss a run must get back to after a blow-up (rule 2)."""
        level = running_min + self.margin(running_min)
        if self.plateau_loss is not None:
            level = min(level, self.plateau_loss - self.plateau_margin)
        return level


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
        self.running_min_step = -1
        self.excursion = _Excursion()
        self.blowup = _Excursion()
        self.pending: tuple[int, float, float] | None = None
        """A blow-up not yet judged: (first step, recovery level, smoothed loss when it fired)."""
        self.plateau = _Excursion()
        self.reached_plateau = False
        self.result: Divergence | None = None

    @property
    def diverged(self) -> bool:
        return self.result is not None

    def _first_above(self, threshold: float, after: int = -1) -> int:
        """The earliest step after ``after`` in the median window whose raw loss is above
        ``threshold`` (the current step if none is: the median can cross on older values)."""
        return next((i for i, v in self.recent if v > threshold and i > after), self.step)

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

        # Rule 2: worse than the untrained model for a few smoothed steps, and no way back.
        blowup_at = self.initial + cfg.blowup_margin
        above = smoothed > blowup_at
        self.blowup.update(above, self._first_above(blowup_at) if above else -1)
        if self.pending is None and self.blowup.length >= cfg.blowup_patience:
            # The running minimum still excludes the blow-up: it is updated only below, and
            # only once a step has passed every rule.
            self.pending = (self.blowup.start, cfg.recovery_level(self.running_min), smoothed)
        if self.pending is not None:
            start, level, peak = self.pending
            if smoothed <= level:
                self.pending = None  # back to learning: the blow-up was a spike, not divergence
            elif self.step - start >= cfg.recover_patience:
                self.result = Divergence(
                    True,
                    start,
                    f"loss blew up above the initial loss {self.initial:.4g} + {cfg.blowup_margin:g} "
                    f"(smoothed {peak:.4g}) from step {start} and did not get back below {level:.4g} "
                    f"within {cfg.recover_patience} steps (now {smoothed:.4g})",
                    self.step,
                )
                return self.result

        # Rule 3: a sustained excursion above the running minimum of the smoothed loss.
        threshold = self.running_min + cfg.margin(self.running_min)
        above = smoothed > threshold
        # An excursion starts after the run reached its minimum: the window may still hold the
        # higher losses from before it (early in training, the steps before the first drop).
        start = self._first_above(threshold, self.running_min_step) if above else -1
        self.excursion.update(above, start)
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
        # Rule 4: stalled on the data's unigram plateau.
        if cfg.plateau_loss is not None:
            self.reached_plateau = self.reached_plateau or smoothed <= cfg.plateau_loss + cfg.plateau_margin
            stalled = self.reached_plateau and smoothed >= cfg.plateau_loss - cfg.plateau_margin
            self.plateau.update(stalled, self.step)
            if self.plateau.length >= cfg.plateau_patience:
                self.result = Divergence(
                    True,
                    self.plateau.start,
                    f"loss stalled on the unigram plateau {cfg.plateau_loss:.4g}: not below "
                    f"{cfg.plateau_loss - cfg.plateau_margin:.4g} for {cfg.plateau_patience} steps "
                    f"from step {self.plateau.start}",
                    self.step,
                )
                return self.result
        if smoothed < self.running_min:
            self.running_min, self.running_min_step = smoothed, self.step
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
