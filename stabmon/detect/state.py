"""Per-run detector state: the last step seen and, per rule, a small plain-dict state per series.

The collector keeps one :class:`DetectorState` per run in memory and may snapshot it with
:meth:`DetectorState.to_dict` (JSON-able: non-finite floats are tagged as
``{"__float__": "nan"}``, since JSON has no NaN) and restore it with
:meth:`DetectorState.from_dict`; without a snapshot it rebuilds the state by replaying the stored
series (:func:`stabmon.detect.replay`). Every per-series buffer is bounded by the config
(windows, baselines), so the state is O(series) in size.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

from stabmon.wire import decode_value, encode_value

STATE_VERSION = 1
_TAG = "__float__"


def _encode(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else {_TAG: encode_value(x)}
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    return x


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if len(x) == 1 and _TAG in x:
            try:
                return decode_value(x[_TAG])
            except ValueError as e:
                raise ValueError(f"invalid tagged float in detector state: {e}") from None
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


@dataclass
class DetectorState:
    """Mutable state of one run; :meth:`Detector.observe` updates it in place."""

    last_step: int | None = None
    rules: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """rule name -> series key -> that rule's state for the series."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (a deep copy: later observations do not change it)."""
        return {"version": STATE_VERSION, "last_step": self.last_step, "rules": _encode(self.rules)}

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``, without the per-float walk when the state holds no
        NaN/inf (the common case; the snapshot is written after every ingested batch)."""
        try:
            return json.dumps(
                {"version": STATE_VERSION, "last_step": self.last_step, "rules": self.rules}, allow_nan=False
            )
        except ValueError:  # a non-finite float somewhere: tag them
            return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorState:
        """The inverse of :meth:`to_dict`. Raises ValueError on a snapshot it cannot read."""
        if not isinstance(d, dict) or d.get("version") != STATE_VERSION:
            version = d.get("version") if isinstance(d, dict) else None
            raise ValueError(f"unsupported detector state (version {version!r}, expected {STATE_VERSION})")
        last_step = d.get("last_step")
        if last_step is not None and (not isinstance(last_step, int) or isinstance(last_step, bool)):
            raise ValueError(f"detector state: last_step must be an int or null, got {last_step!r}")
        rules = d.get("rules", {})
        if not isinstance(rules, dict) or not all(
            isinstance(series, dict) and all(isinstance(s, dict) for s in series.values())
            for series in rules.values()
        ):
            raise ValueError("detector state: 'rules' must map rule -> series key -> state dict")
        return cls(last_step=last_step, rules=copy.deepcopy(_decode(rules)))
