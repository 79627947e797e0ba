"""What a :class:`~trainer_hooks.client.Client` is told and what it tells back: the run's
description (:class:`RunInfo`), the client's tuning knobs (:class:`ClientConfig`, validated
on construction) and its counters (:class:`ClientStats`, a snapshot from ``client.stats``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """What the collector is told about the run when the client registers it."""

    name: str
    project: str | None = None
    """Must match the token's project when given; None lets the token decide."""
    config: dict[str, Any] = field(default_factory=dict)
    """Anything JSON-able: variant, lr, model size, seed (non-JSON values are stringified)."""
    id: str | None = None
    """Client-chosen run id (``[A-Za-z0-9_-]{1,64}``); a uuid4 hex when None. Reuse it to
    resume a run, or to replay its leftover spool from another process."""


@dataclass
class ClientConfig:
    """Tuning knobs of :class:`Client`; every one can also be passed to ``Client(...)`` by name."""

    max_batch_points: int = 1000
    """Seal a batch at this many points (at most ``stabmon.wire.MAX_POINTS_PER_BATCH``)."""
    flush_interval_s: float = 1.0
    """Seal a batch when its first point is this old."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Keep request bodies under this size (the collector's limit is a few MB)."""
    max_queue_records: int = 100_000
    """In-memory records awaiting the batcher; past it the oldest are dropped (counted)."""
    spool_max_bytes: int = 256 * 1024 * 1024
    """Pending bytes on disk before the oldest history is thinned (see ``spool.py``)."""
    spool_keep_every: int = 2
    """Thinning keeps every k-th step of the oldest segment."""
    spool_fsync: bool = False
    """fsync every spool append/ack (survives power loss) instead of flushing to the OS only."""
    batch_id_prefix: str | None = None
    """Deterministic batch ids, ``{prefix}{n}`` for the n-th sealed batch, instead of random ones:
    for replaying fixed content (``stabmon import``), where the same records in the same order
    seal into the same batches, so a second replay is answered as duplicates and changes nothing.
    Live runs leave it None."""
    spool_tag: str | None = None
    """Distinguishes processes of one run sharing a spool dir; default ``$RANK`` or "0"."""
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 300.0
    """Cap on a server's ``Retry-After``."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    flush_timeout_s: float = 30.0
    """What ``flush()``/``close()`` wait at most when given no timeout."""
    atexit_timeout_s: float = 10.0
    """How long interpreter exit waits for delivery; the rest stays in the spool."""
    poll_interval_s: float = 0.05
    """How often the background threads look for work."""

    def __post_init__(self) -> None:
        for name in ("flush_interval_s", "backoff_initial_s", "connect_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_queue_records < 1:
            raise ValueError(f"max_queue_records must be >= 1, got {self.max_queue_records}")
        if not 0 < self.poll_interval_s <= 1:
            raise ValueError(f"poll_interval_s must be in (0, 1], got {self.poll_interval_s}")


@dataclass(frozen=True)
class ClientStats:
    """A snapshot of what the client did (``client.stats``)."""

    run_id: str
    registered: bool
    records_written: int
    records_dropped: int
    """Records lost because the in-memory queue overflowed (the batcher could not keep up)."""
    invalid_records: int
    invalid_values: int
    """Values dropped for an invalid series key or a non-numeric value."""
    points_spooled: int
    points_sent: int
    """Points posted (first attempts; resends are counted in ``retries``)."""
    points_acked: int
    """Points in batches the collector acknowledged (duplicates included)."""
    batches_acked: int
    duplicates: int
    """Acknowledged batches the collector already had (a retry after a lost answer)."""
    retries: int
    spooled_bytes: int
    """Pending (unacknowledged) bytes in the spool now."""
    spooled_points: int
    spooled_batches: int
    thinned_points: int
    rejected_batches: int
    rejected_points: int
    points_lost: int
    """Points that could not be written to the spool (disk full, permissions)."""
    status_pending: bool
    """The run's status update from ``close()`` waits in the spool for the collector."""
    alert_callback_errors: int
    last_error: str | None


def default_spool_dir() -> Path:
    env = os.environ.get("STABMON_SPOOL_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "stabmon" / "spool"
