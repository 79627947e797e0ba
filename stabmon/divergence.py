"""The definition of divergence: judged by its loss alone, how did a training run end?

stabmon's experiments, its detector benchmark and the trainer's ``stop_on_divergence`` all use
this one definition, offline (`label_run` over a recorded loss history) and online
(`DivergenceTracker`, fed one loss per step). Both run the same code: the online verdict after
step ``t`` *is* the offline label of the history up to ``t``, so the two can never disagree.

Every run gets an **outcome**, and an **onset** (the first step of the excursion it is about):

- ``diverged``: the loss went non-finite; or the run ends on the unigram plateau (a stall); or
  it ends above its pre-onset minimum + max(0.3 nat, 10%) without ever having come back within
  half that margin (a rise).
- ``transient``: the run had an excursion and worked it off. Neither a divergence nor a stable
  run: an alert on it is reported apart (a warning is right; a critical is noted, not counted
  as a false alarm or a catch).
- ``stable``: no excursion, and the run did not end on the plateau.
- ``undetermined``: the divergence's onset lies in the last ``settle_steps`` (100) steps, or
  an excursion from there is still open; or the end level is within ``edge_margin`` (0.05 nat)
  of the plateau's lower edge, or on the plateau while the loss never came down to it (too slow
  to judge) or is leaving it in the last steps. The first is the case of a run cut short; the
  second is where labels flipped between two CPUs.

How the loss is read:

- The **smoothed loss** is the median of the last ``window`` (5) finite losses: an isolated
  spike must cover most of the window to move it. The **end level** is the median of the last
  ``end_window`` (20): where the run ends, robust to one step's noise.
- An **excursion** is a rise of the smoothed loss above the *pre-onset minimum*, the lowest end
  level so far (the level the run had reached; the minimum of the 5-step median would be
  biased low by batch noise), by ``margin = max(abs_margin, rel_margin * minimum)``, that lasts
  ``excursion_patience`` (10) smoothed steps or passes the blow-up level (below). Shorter rises
  are noise or spikes: on the ``tiny`` corpus's 512-byte batches the 5-step median wanders
  0.3 nats above the run's level for a few steps in about one run in three. The onset is the
  earliest raw loss above the threshold in the median window where the rise began, after the
  step of the minimum (the window may still hold losses from before it). It is **worked off**
  when the smoothed loss comes back within ``recover_fraction`` (half) of the margin: a recovery
  clause, so a 0.36-nat bump in warmup that the run works off, ending among the best runs, is a
  transient, not a divergence (it was under the old "stays up for 25 steps" rule).
- The **plateau** (``plateau_loss``, when known) is the loss of the best context-free
  predictor of the data, the entropy of its byte-unigram distribution
  (`trainer_hooks.lab.data.ByteCorpus.unigram_entropy`, 3.25 nats for the built-in corpus; the
  trainer fills it in). A run that *ends* with its end level at or above the band's lower edge
  (``plateau_loss - plateau_margin``) has learned nothing about context: this is how high-LR
  runs fail at small scale (blow up or oscillate, then sit near 3.2-3.4 nats while stable runs
  go on to ~2.5). The stall is judged at the end of the run, not by a fixed count of steps on
  the band: under the old 150-step rule a run 149 steps on the band was stable, one 150 steps
  on it diverged even if it learned afterwards, and a stall in the last 150 steps was
  invisible. A stall's onset is where the run's last stay on or above the lower edge reached
  the band (``plateau_loss + plateau_margin``), or the first excursion of that stay if it came
  before (a blow-up in warmup that leaves the run on the plateau dates from the blow-up).

The **kind** of a divergence, the first that applies:

- ``early``: onset before step ``early_steps`` (20); nothing can precede it.
- ``blow-up``: the loss went non-finite, or the episode's smoothed peak was more than
  ``blowup_margin`` (1 nat) above the initial, untrained loss (~ln 256 for bytes).
- ``stall``: the run ends on the plateau band.
- ``late-rise``: any other rise.

Online, the **decision step** is the first step at which the verdict on the prefix was already
``diverged`` with this onset: what a loss-based stop, acting on what it has seen, would do. A
non-finite loss is decided at once; a rise or a stall ``settle_steps`` after its onset at the
earliest, since before that it is undetermined. ``first_call`` is the first such step on any
episode: where ``stop_on_divergence`` stops, and on a run that later recovers, a stop it would
have been wrong to take. A run is judged on its own history (and the data's plateau), never
against a reference run: a run that is merely slower than another has not diverged."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import median

from stabmon.divergence_config import (
    BLOW_UP,
    DIVERGED,
    EARLY,
    KINDS,
    LATE_RISE,
    OUTCOMES,
    STABLE,
    STALL,
    TRANSIENT,
    UNDETERMINED,
    Divergence,
    DivergenceConfig,
    RunLabel,
)

__all__ = [
    "BLOW_UP",
    "DIVERGED",
    "EARLY",
    "KINDS",
    "LATE_RISE",
    "NOT_DIVERGED",
    "OUTCOMES",
    "STABLE",
    "STALL",
    "TRANSIENT",
    "UNDETERMINED",
    "Divergence",
    "DivergenceConfig",
    "DivergenceTracker",
    "RunLabel",
    "find_divergence",
    "label_run",
]

NOT_DIVERGED = Divergence(False, None, "no divergence")


@dataclass
class _Excursion:
    onset: int
    pre_min: float
    threshold: float
    recovery: float
    peak: float
    above: int = 0
    """Consecutive smoothed steps above the threshold, until confirmed."""
    confirmed: bool = False
    """Lasted ``excursion_patience`` steps or passed the blow-up level: an excursion, not noise."""


class DivergenceTracker:
    """Online divergence: feed one loss per step with `update`; `label()` is the verdict on what
    it has seen. `update` returns the first call (a `Divergence`, the same object on every
    later call) once the verdict has been ``diverged`` at some step, None before: the stop
    signal. It stays set if the run later recovers; `label()` then says so."""

    def __init__(self, config: DivergenceConfig | None = None) -> None:
        self.config = config or DivergenceConfig()
        self.reset()

    def reset(self) -> None:
        cfg = self.config
        self.step = -1
        self.initial: float | None = None
        self.recent: deque[tuple[int, float]] = deque(maxlen=cfg.window)
        self.tail: deque[float] = deque(maxlen=cfg.end_window)
        self.nonfinite: tuple[int, float] | None = None
        self.running_min = math.inf
        self.running_min_step = -1
        self.open: _Excursion | None = None
        self.worked_off = 0
        self.largest: _Excursion | None = None
        """The largest excursion worked off (by its rise above the pre-onset minimum)."""
        self.band_step: int | None = None
        """First step at which the smoothed loss came down to the plateau band's upper edge."""
        self.stay_start: int | None = None
        """First step of the current run of smoothed losses on or above the band's lower edge."""
        self.stay_excursion: int | None = None
        self.stay_peak = -math.inf
        self.calls: dict[int, int] = {}
        """Onset -> the first step at which the verdict was ``diverged`` with that onset."""
        self.first_call: int | None = None
        self.result: Divergence | None = None
        self._label = RunLabel(STABLE)

    @property
    def diverged(self) -> bool:
        """Whether the verdict has been ``diverged`` at some step (the stop signal)."""
        return self.result is not None

    def label(self) -> RunLabel:
        """The verdict on the losses seen so far, as if the run ended here."""
        return self._label

    def _first_above(self, threshold: float, after: int) -> int:
        """The earliest step after ``after`` in the median window whose raw loss is above
        ``threshold`` (the current step if none is: the median can cross on older values)."""
        return next((i for i, v in self.recent if v > threshold and i > after), self.step)

    def update(self, loss: float) -> Divergence | None:
        self.step += 1
        loss = float(loss)
        if self.nonfinite is None and not math.isfinite(loss):
            self.nonfinite = (self.step, loss)
        if self.nonfinite is None:
            self._observe(loss)
        label = self._verdict()
        if label.outcome == DIVERGED:
            self.calls.setdefault(label.onset, self.step)
            if self.result is None:
                self.first_call = self.step
                self.result = Divergence(True, label.onset, label.reason, self.step)
        self._label = self._finish(label)
        return self.result

    def extend(self, losses: Iterable[float]) -> Divergence | None:
        for loss in losses:
            self.update(loss)
        return self.result

    def _observe(self, loss: float) -> None:
        """Update the smoothed loss, the excursion and the plateau stay with a finite loss."""
        cfg = self.config
        if self.initial is None:
            self.initial = loss
        self.recent.append((self.step, loss))
        self.tail.append(loss)
        s = median(v for _, v in self.recent)
        e = median(self.tail)
        if self.open is None:
            threshold = self.running_min + cfg.margin(self.running_min)
            if s > threshold:
                onset = self._first_above(threshold, self.running_min_step)
                self.open = _Excursion(
                    onset, self.running_min, threshold, cfg.recovery_level(self.running_min), s
                )
        exc = self.open
        if exc is not None:
            exc.peak = max(exc.peak, s)
            if not exc.confirmed:
                if s > exc.threshold:
                    exc.above += 1
                    blown = exc.peak > self.initial + cfg.blowup_margin
                    exc.confirmed = exc.above >= cfg.excursion_patience or blown
                else:
                    self.open = None  # a spike or noise, not an excursion
            elif s <= exc.recovery:
                self.worked_off += 1
                if self.largest is None or _rise(exc) > _rise(self.largest):
                    self.largest = exc
                self.open = None
        # The pre-onset minimum is the lowest end level: the level the run had reached, far less
        # biased low by batch noise than the minimum of the 5-step median.
        if self._excursion() is None and e < self.running_min:
            self.running_min, self.running_min_step = e, self.step
        if cfg.plateau_loss is None:
            return
        if self.band_step is None and s <= cfg.plateau_high:
            self.band_step = self.step
        if s >= cfg.plateau_low:
            if self.stay_start is None:
                self.stay_start, self.stay_peak, self.stay_excursion = self.step, s, None
            self.stay_peak = max(self.stay_peak, s)
            if self.stay_excursion is None and self._excursion() is not None:
                self.stay_excursion = self.open.onset
        else:
            self.stay_start, self.stay_excursion, self.stay_peak = None, None, -math.inf

    def _excursion(self) -> _Excursion | None:
        """The open excursion, once confirmed (an unconfirmed rise may still be noise)."""
        return self.open if self.open is not None and self.open.confirmed else None

    def _stall_onset(self) -> int | None:
        """Where the current stay on the plateau began to count (see the module docstring); None
        if the loss is not on it, or has never come down to it and had no excursion there."""
        if self.stay_start is None:
            return None
        if self.band_step is None:
            return self.stay_excursion
        base = max(self.stay_start, self.band_step)
        return base if self.stay_excursion is None else min(base, self.stay_excursion)

    def _verdict(self) -> RunLabel:
        """The label of the history so far, without the fields derived from past verdicts."""
        cfg, t = self.config, self.step
        if self.nonfinite is not None:
            at, value = self.nonfinite
            onset = self.open.onset if self.open is not None else at
            kind = EARLY if onset < cfg.early_steps else BLOW_UP
            peak = self.open.peak if self.open is not None else None
            return RunLabel(
                DIVERGED, kind, onset, reason=f"non-finite loss ({value}) at step {at}", peak_loss=peak
            )
        e = median(self.tail)
        exc = self._excursion()
        rise = exc is not None and e > exc.threshold
        low = cfg.plateau_low
        # A run ending above the band after a rise has risen, not stalled: the rise dates it.
        on_plateau = low is not None and e >= low and (not rise or e <= cfg.plateau_high)
        if rise or on_plateau:
            stall_onset = self._stall_onset() if on_plateau else None
            onsets = [o for o in (exc.onset if rise else None, stall_onset) if o is not None]
            if not onsets:
                why = (
                    "its last steps are already below it: leaving the plateau as it ends"
                    if self.stay_start is None
                    else "has not come down to the plateau yet: too slow to judge"
                )
                return RunLabel(
                    UNDETERMINED,
                    end_loss=e,
                    reason=f"ends at {e:.4g}, on or above the plateau's lower edge {low:.4g}, but {why}",
                )
            onset = min(onsets)
            peaks = [
                p
                for p in (exc.peak if rise else None, self.stay_peak if stall_onset is not None else None)
                if p is not None
            ]
            peak = max(peaks)
            what = (
                f"ends at {e:.4g}, above its pre-onset minimum {exc.pre_min:.4g} + "
                f"{exc.threshold - exc.pre_min:.3g} without coming back below {exc.recovery:.4g}"
                if rise
                else f"ends at {e:.4g} on the unigram plateau {cfg.plateau_loss:.4g} (lower edge {low:.4g})"
            )
            if onset > t - cfg.settle_steps:
                return RunLabel(
                    UNDETERMINED,
                    None,
                    onset,
                    end_loss=e,
                    peak_loss=peak,
                    reason=(f"{what}, but the onset {onset} is within the last {cfg.settle_steps} steps"),
                )
            if not rise and e - low <= cfg.edge_margin:
                return RunLabel(
                    UNDETERMINED,
                    None,
                    onset,
                    end_loss=e,
                    peak_loss=peak,
                    reason=(f"{what}, within {cfg.edge_margin:g} of the edge"),
                )
            if onset < cfg.early_steps:
                kind = EARLY
            elif peak > self.initial + cfg.blowup_margin:
                kind = BLOW_UP
            elif on_plateau:
                kind = STALL
            else:
                kind = LATE_RISE
            return RunLabel(
                DIVERGED, kind, onset, end_loss=e, peak_loss=peak, reason=f"{what} from step {onset}"
            )
        if low is not None and low - e <= cfg.edge_margin:
            return RunLabel(
                UNDETERMINED,
                end_loss=e,
                reason=(f"ends at {e:.4g}, within {cfg.edge_margin:g} of the plateau's lower edge {low:.4g}"),
            )
        if exc is not None and exc.onset > t - cfg.settle_steps:
            return RunLabel(
                UNDETERMINED,
                None,
                exc.onset,
                end_loss=e,
                peak_loss=exc.peak,
                reason=(f"an excursion from step {exc.onset} (peak {exc.peak:.4g}) is not worked off yet"),
            )
        biggest = max((x for x in (exc, self.largest) if x is not None), key=_rise, default=None)
        if biggest is not None:
            return RunLabel(
                TRANSIENT,
                None,
                biggest.onset,
                end_loss=e,
                peak_loss=biggest.peak,
                reason=(
                    f"worked off {self.worked_off} excursion(s); the largest from step {biggest.onset} "
                    f"rose to {biggest.peak:.4g} from {biggest.pre_min:.4g}; ends at {e:.4g}"
                ),
            )
        return RunLabel(STABLE, end_loss=e, reason=f"no excursion; ends at {e:.4g}")

    def _finish(self, label: RunLabel) -> RunLabel:
        """``label`` with the fields that depend on earlier verdicts filled in."""
        return RunLabel(
            label.outcome,
            label.kind,
            label.onset,
            self.calls[label.onset] if label.outcome == DIVERGED else None,
            self.first_call,
            label.reason,
            self.step + 1,
            label.end_loss,
            label.peak_loss,
            self.worked_off,
        )


def _rise(x: _Excursion) -> float:
    return x.peak - x.pre_min


def label_run(losses: Sequence[float], config: DivergenceConfig | None = None) -> RunLabel:
    """The end-of-run verdict on a whole loss history (see the module docstring)."""
    tracker = DivergenceTracker(config)
    tracker.extend(losses)
    return tracker.label()


def find_divergence(losses: Sequence[float], config: DivergenceConfig | None = None) -> Divergence:
    """`label_run`, two-valued: diverged (at its onset, decided at its decision step) or not."""
    return label_run(losses, config).to_divergence()
