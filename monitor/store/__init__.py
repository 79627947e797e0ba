"""Storage for the collector: SQLAlchemy behind a small interface (:class:`Store`), SQLite or
PostgreSQL chosen by URL. See :mod:`monitor.store.models` for the schema and
:mod:`monitor.store.points` for the one batch-write primitive and its semantics."""

from monitor.store.errors import Conflict, LimitExceeded, NotFound, StoreError
from monitor.store.points import SeriesInfo, WriteResult
from monitor.store.retention import PrunedRun, PruneReport
from monitor.store.series import Buckets, SeriesResult
from monitor.store.store import MetricRow, MetricsSnapshot, Store
from monitor.store.tokens import Project, TokenInfo
from monitor.store.unit import IngestUnit

__all__ = [
    "Buckets",
    "Conflict",
    "IngestUnit",
    "LimitExceeded",
    "MetricRow",
    "MetricsSnapshot",
    "NotFound",
    "Project",
    "PruneReport",
    "PrunedRun",
    "SeriesInfo",
    "SeriesResult",
    "Store",
    "StoreError",
    "TokenInfo",
    "WriteResult",
]
