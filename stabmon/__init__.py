"""stabmon's ground floor: what both sides share, importing nothing above it.

- :mod:`stabmon.wire`: the wire contract (payload schema, series-key grammar, non-finite
  encoding, severity order, the ``Sink`` protocol); pydantic only.
- :mod:`stabmon.detect`: the pure, streaming divergence detector (series in, findings out).
- :mod:`stabmon.divergence`: the ground-truth divergence definition.
- :mod:`stabmon.scoring`: recall, false alarms and lead times of a detector against it.
- :mod:`stabmon.history`: past runs read from files (TensorBoard, CSV, JSON lines, HF Trainer).
- :mod:`stabmon.backtest`: those runs replayed through the detector offline and scored.

The collector (:mod:`monitor`) and the training side (:mod:`trainer_hooks`) stand on it side
by side; the command line (:mod:`stabmon_cli`) is the roof that wires them together.
"""

__version__ = "0.1.0"
