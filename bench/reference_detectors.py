"""Two published loss-spike rules, re-implemented as streaming detectors for the detection benchmark.

- :class:`KillLossSpike` follows LLM Foundry's ``KillLossSpike`` callback
  (``llmfoundry/callbacks/kill_loss_spike_callback.py``): a window of the *previous* losses
  (``window`` of them, widened to 5% of the run's steps when that is larger); once the window is
  full, a loss at or above ``multiplier`` x the window's mean is an outlier, and more than
  ``patience`` consecutive outliers (so five with the defaults) is a loss spike; separately, from
  step ``2 * window`` on, half of the window above ``loss_cap`` (10, or the largest loss of the
  first full window if that is lower, taken at the first check) is "persistently high loss".
  The current loss joins the window after the check, outliers included. The window mean is a
  plain mean, so a NaN loss poisons it: the spike path goes quiet for a window's length, as in
  the original, and only the high-loss count can still fire.
- :class:`SpikeScore` follows OLMo-core's ``StabilityMonitorCallback``: a loss or gradient-norm
  value above the mean + ``threshold_std`` (6) standard deviations of the previous ``window``
  (128) values is a spike; the window must be full and its std above 1e-10. OLMo reports the
  rate of such spikes; as a detector, the first spike is the alert.

Both take one ``(step, loss, grad_norm)`` per training step through ``update`` and return True at
the step their rule fires. ``first_alert`` runs one over a whole history.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


class KillLossSpike:
    """LLM Foundry's loss-spike / high-loss rule."""

    name = "foundry_kill_loss_spike"

    def __init__(
        self,
        window: int = 100,
        patience: int = 4,
        multiplier: float = 2.0,
        loss_cap: float = 10.0,
        total_steps: int | None = None,
        window_fraction: float = 0.05,
    ) -> None:
        if window < 1 or patience < 0 or multiplier <= 0:
            raise ValueError("window must be >= 1, patience >= 0 and multiplier > 0")
        if total_steps is not None:
            window = max(window, round(total_steps * window_fraction))
        self.window_size = window
        self.patience = patience
        self.multiplier = multiplier
        self.loss_cap = loss_cap
        self._cap_from_data = loss_cap == 10.0  # the original lowers only its default cap
        self.window: deque[float] = deque(maxlen=window)
        self.outliers = 0
        self.reason = ""

    def update(self, step: int, loss: float, grad_norm: float | None = None) -> bool:
        fired = False
        if len(self.window) == self.window_size:
            if self._cap_from_data:
                # "set loss cap to the maximum loss from the first loss window", at the first check
                self.loss_cap = min(max(self.window), self.loss_cap)
                self._cap_from_data = False
            mean = sum(self.window) / len(self.window)
            if loss >= mean * self.multiplier:
                self.outliers += 1
                if self.outliers > self.patience:
                    fired, self.reason = (
                        True,
                        f"{self.outliers} losses >= {self.multiplier:g}x the window mean",
                    )
            else:
                self.outliers = 0
            completed = step + 1  # batches finished, as Composer's timestamp counts them
            if not fired and completed >= 2 * self.window_size:
                high = sum(1 for v in self.window if v > self.loss_cap)
                if high >= self.window_size / 2:
                    fired, self.reason = True, f"{high} of {self.window_size} losses above {self.loss_cap:g}"
        self.window.append(loss)
        return fired


class SpikeScore:
    """OLMo-core's spike rule (value > mean + k std of the previous window) on loss and grad norm."""

    name = "olmo_spike_6sigma"

    def __init__(self, window: int = 128, threshold_std: float = 6.0) -> None:
        if window < 2 or threshold_std <= 0:
            raise ValueError("window must be >= 2 and threshold_std > 0")
        self.window_size = window
        self.threshold_std = threshold_std
        self.loss: deque[float] = deque(maxlen=window)
        self.grad: deque[float] = deque(maxlen=window)
        self.reason = ""

    def _is_spike(self, value: float, history: deque[float]) -> bool:
        if len(history) < self.window_size:
            return False
        mean = sum(history) / len(history)
        std = math.sqrt(sum((x - mean) ** 2 for x in history) / len(history))
        if std < 1e-10:  # also False for a NaN-poisoned window: NaN < x is False, but so is >
            return False
        return value > mean + self.threshold_std * std

    def update(self, step: int, loss: float, grad_norm: float | None = None) -> bool:
        fired = self._is_spike(loss, self.loss)
        self.loss.append(loss)
        if grad_norm is not None:
            g = self._is_spike(grad_norm, self.grad)
            self.grad.append(grad_norm)
            if g and not fired:
                self.reason = f"grad norm {grad_norm:.3g} above mean + {self.threshold_std:g} std"
            fired = fired or g
        if fired and not self.reason:
            self.reason = f"loss {loss:.3g} above mean + {self.threshold_std:g} std"
        return fired


@dataclass(frozen=True)
class Alert:
    step: int
    reason: str


def first_alert(
    det: KillLossSpike | SpikeScore, losses: Sequence[float], grad_norms: Sequence[float]
) -> Alert | None:
    """Stream a history through ``det``; the first step at which it fires (None: never)."""
    for step, loss in enumerate(losses):
        g = grad_norms[step] if step < len(grad_norms) else None
        if det.update(step, float(loss), None if g is None else float(g)):
            return Alert(step, det.reason)
    return None
