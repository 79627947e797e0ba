"""The divergence detector: pure, streaming, rebuildable.

``Detector(config).observe(state, step, values)`` folds one step of a run's series (per-layer
output norms, attention-logit maxima and entropies, loss, gradient norm) into a per-run
:class:`DetectorState` and returns the :class:`Finding` of every rule firing at that step
(``non_finite``, ``loss_spike``, ``grad_spike``, ``norm_growth``, ``logit_max``,
``entropy_collapse``), at most one per rule. Rules have hysteresis, so a rule keeps firing while
its condition holds and stops when it clearly clears; the collector maps that onto one alert per
(run, rule). :func:`replay` rebuilds a state from stored series. No I/O, no torch, no web stack.
"""

from stabmon.detect.config import DetectorConfig
from stabmon.detect.detector import Detector, replay
from stabmon.detect.finding import Finding, Severity
from stabmon.detect.state import DetectorState

__all__ = ["Detector", "DetectorConfig", "DetectorState", "Finding", "Severity", "replay"]
