"""Turning records into request-sized batches for the collector's ingest API.

Records arrive one per training step; the collector wants ``PointsIn`` bodies
(``{"batch_id", "points": [...]}``). :class:`Batcher` merges records into batches and
seals one when it holds ``max_points`` points, when its first point is ``max_age_s`` old,
or when the next point would push the JSON body past ``max_body_bytes``, so a batch never
exceeds :data:`stabmon.wire.MAX_POINTS_PER_BATCH` or the collector's body limit. Each
point is JSON-encoded exactly once, here; the sealed body is what the spool stores and
what is sent, byte for byte. The batch id (uuid4 hex, or ``{id_prefix}{n}`` when replaying fixed
content) is fixed when a batch is sealed and travels with it, which is what makes retries
idempotent. Records are cleaned rather than
refused: invalid keys and non-numeric values are dropped and counted, and a point with
more than :data:`stabmon.wire.MAX_VALUES_PER_POINT` values is split into several points
of the same step and rank.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from stabmon.wire import MAX_POINTS_PER_BATCH, MAX_STEP, MAX_VALUES_PER_POINT, encode_value, is_valid_key

log = logging.getLogger("stabmon.client")

# '{"batch_id":"<32 hex>","points":[' + ']}' with room to spare.
_ENVELOPE_BYTES = 96
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
# Keys already checked against the grammar; bounded so a caller inventing keys cannot grow it.
_MAX_KNOWN_KEYS = 100_000


@dataclass
class SealedBatch:
    """A batch ready for the spool: its id, its exact request body and its size."""

    batch_id: str
    body: str
    """``{"batch_id": ..., "points": [...]}`` as compact JSON, one line."""
    n_points: int


@dataclass
class EncodeStats:
    """What record cleaning removed (read by the client's stats)."""

    invalid_records: int = 0
    invalid_values: int = 0
    split_points: int = 0
    valid_keys: set[str] = field(default_factory=set)
    _warned: set[str] = field(default_factory=set)

    def warn_once(self, kind: str, msg: str, *args: object) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(msg + " (logged once per kind)", *args)


def encode_points(record: dict, stats: EncodeStats) -> list[str]:
    """One record as one or more point JSON strings (several if it has too many values).

    Returns ``[]`` (and counts it) for a record without a usable step/rank/values.
    """
    try:
        step = record["step"]
        rank = record.get("rank", 0)
        values = record["values"]
        # bool is an int subclass; a True step is a bug upstream, not step 1.
        if isinstance(step, bool) or isinstance(rank, bool):
            raise TypeError("bool step/rank")
        step, rank = int(step), int(rank)
        if not (0 <= step <= MAX_STEP and 0 <= rank <= 65_535):
            raise ValueError(f"step {step} / rank {rank} out of range")
        items = values.items()
    except Exception as e:
        stats.invalid_records += 1
        stats.warn_once("record", "stabmon client: dropped a malformed record: %s", e)
        return []
    clean: dict[str, float | str] = {}
    known = stats.valid_keys
    for key, v in items:
        # The same few hundred keys come every step: check the grammar once per key.
        if key not in known:
            if not isinstance(key, str) or not is_valid_key(key):
                stats.invalid_values += 1
                stats.warn_once("key", "stabmon client: dropped value with invalid series key %r", key)
                continue
            if len(known) < _MAX_KNOWN_KEYS:
                known.add(key)
        try:
            if v.__class__ is float:  # the common case, without the isinstance chain
                f = v
            elif isinstance(v, bool):
                raise TypeError("bool is not a measurement")
            else:
                f = float(v)
            clean[key] = f if f - f == 0.0 else encode_value(f)  # x - x is 0 only for finite x
        except (TypeError, ValueError) as e:
            stats.invalid_values += 1
            stats.warn_once("value", "stabmon client: dropped non-numeric value for %r: %s", key, e)
    if len(clean) <= MAX_VALUES_PER_POINT:
        chunks = [clean]
    else:
        keys = list(clean)
        chunks = [
            {k: clean[k] for k in keys[i : i + MAX_VALUES_PER_POINT]}
            for i in range(0, len(keys), MAX_VALUES_PER_POINT)
        ]
        stats.split_points += len(chunks) - 1
    return [_dumps({"step": step, "rank": rank, "values": chunk}) for chunk in chunks]


def seal(points: list[str], batch_id: str | None = None) -> SealedBatch:
    """Wrap already-encoded points into a ``PointsIn`` body with a fresh (or given) batch id."""
    bid = batch_id or uuid.uuid4().hex
    body = '{"batch_id":' + json.dumps(bid) + ',"points":[' + ",".join(points) + "]}"
    return SealedBatch(batch_id=bid, body=body, n_points=len(points))


class Batcher:
    """Accumulates encoded points and seals batches by count, age and byte size.

    Not thread-safe: owned by the client's batching thread. ``clock`` is injectable so
    tests can drive the age rule without sleeping.
    """

    def __init__(
        self,
        *,
        max_points: int = 1000,
        max_age_s: float = 1.0,
        max_body_bytes: int = 4 * 1024 * 1024,
        id_prefix: str | None = None,
        clock=time.monotonic,
    ) -> None:
        if not 1 <= max_points <= MAX_POINTS_PER_BATCH:
            raise ValueError(f"max_points must be in [1, {MAX_POINTS_PER_BATCH}], got {max_points}")
        if max_age_s < 0:
            raise ValueError(f"max_age_s must be >= 0, got {max_age_s}")
        if max_body_bytes < 4096:
            raise ValueError(f"max_body_bytes must be >= 4096, got {max_body_bytes}")
        self.max_points = max_points
        self.max_age_s = max_age_s
        self.max_body_bytes = max_body_bytes
        self.stats = EncodeStats()
        self.id_prefix = id_prefix
        self._sealed = 0
        self._clock = clock
        self._points: list[str] = []
        self._bytes = _ENVELOPE_BYTES
        self._started: float | None = None

    def __len__(self) -> int:
        return len(self._points)

    def add(self, record: dict) -> list[SealedBatch]:
        """Add one record; returns the batches this sealed (usually none)."""
        out: list[SealedBatch] = []
        for p in encode_points(record, self.stats):
            size = len(p.encode()) + 1  # + the separating comma
            if self._points and self._bytes + size > self.max_body_bytes:
                out.append(self._seal())
            self._points.append(p)
            self._bytes += size
            if self._started is None:
                self._started = self._clock()
            if len(self._points) >= self.max_points:
                out.append(self._seal())
        return out

    def due(self) -> bool:
        """True when the open batch is old enough to be sealed."""
        return self._started is not None and self._clock() - self._started >= self.max_age_s

    def seal_open(self) -> SealedBatch | None:
        """Seal whatever is open (flush/close), or None if nothing is."""
        return self._seal() if self._points else None

    def _seal(self) -> SealedBatch:
        self._sealed += 1
        b = seal(self._points, None if self.id_prefix is None else f"{self.id_prefix}{self._sealed}")
        self._points = []
        self._bytes = _ENVELOPE_BYTES
        self._started = None
        return b
