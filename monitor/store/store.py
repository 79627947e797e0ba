"""The :class:`Store`: the collector's whole storage interface, one object per database.

Routes and services call its methods and never hold SQL. The backend is chosen by URL
(``sqlite:///...`` or ``postgresql+psycopg://...``); the methods are grouped by concept in
mixins (runs, projects, tokens, points, series, alerts), plus the webhook delivery log and
outbox (:attr:`Store.deliveries`, :attr:`Store.outbox`). Every method runs in its own transaction;
writes on SQLite take the write lock up front (see :mod:`monitor.store.engine`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, select, text

from monitor.store import models as m
from monitor.store.alerts import AlertsMixin
from monitor.store.codec import from_db, utcnow
from monitor.store.deliveries import SqlDeliveryLog
from monitor.store.engine import WRITE_OPTION, make_engine
from monitor.store.outbox import SqlOutbox
from monitor.store.points import PointsMixin
from monitor.store.projects import ProjectsMixin
from monitor.store.retention import RetentionMixin
from monitor.store.runs import RunsMixin
from monitor.store.series import SeriesMixin
from monitor.store.tokens import TokensMixin
from monitor.store.unit import UnitMixin


@dataclass(frozen=True)
class MetricRow:
    """One latest value of an active run, for the Prometheus collector."""

    project: str
    run_id: str  # the external id: unique within its project only
    layer: int | None
    site: str | None
    stat: str
    value: float


@dataclass(frozen=True)
class MetricsSnapshot:
    latest: list[MetricRow]
    last_step: dict[tuple[str, str], int]  # (project, run_id) -> step
    open_alerts: list[tuple[str, str, str, str]]  # (project, run_id, rule, severity)


DEFAULT_MAX_SERIES_PER_RUN = 10_000
READY_PROBE_LOCK_MS = 2000


class Store(
    RunsMixin, ProjectsMixin, TokensMixin, PointsMixin, SeriesMixin, AlertsMixin, UnitMixin, RetentionMixin
):
    def __init__(
        self,
        url: str,
        pool_size: int = 8,
        *,
        sqlite_busy_timeout_s: float | None = None,
        max_series_per_run: int = DEFAULT_MAX_SERIES_PER_RUN,
    ) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, sqlite_busy_timeout_s=sqlite_busy_timeout_s)
        self.dialect = self.engine.dialect.name
        self.max_series_per_run = max_series_per_run
        """Distinct series keys one run may have; a batch adding more is refused whole."""
        self.deliveries = SqlDeliveryLog(self)
        """The webhook delivery log (``alert_deliveries``)."""
        self.outbox = SqlOutbox(self)
        """The webhook deliveries still owed (``alert_outbox``), resumed after a restart."""

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                yield conn

    def write_transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction for the stores that share this database (the alert outbox and
        delivery log): on SQLite it takes the write lock up front, as the store's own writes do."""
        return self._write()

    def ping(self) -> None:
        """Raises if the database is unreachable, or (SQLite) if its write lock cannot be
        had within a couple of seconds: in WAL mode readers never block, so ``SELECT 1``
        would report ready while every ingest waits on another writer and fails."""
        with self.engine.connect() as conn:
            if self.dialect != "sqlite":
                conn.execute(text("SELECT 1"))
                return
            raw = conn.connection.driver_connection
            (busy_ms,) = raw.execute("PRAGMA busy_timeout").fetchone()
            raw.execute(f"PRAGMA busy_timeout={min(busy_ms, READY_PROBE_LOCK_MS)}")
            try:
                conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():  # BEGIN IMMEDIATE: waits for the write lock, writes nothing
                    pass
            finally:
                raw.execute(f"PRAGMA busy_timeout={busy_ms}")

    def dispose(self) -> None:
        self.engine.dispose()

    def truncate(self) -> None:
        """Delete every row (tests use this between cases)."""
        with self._write() as conn:
            if self.dialect == "postgresql":
                names = ", ".join(t.name for t in m.ALL_TABLES)
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            else:
                for t in m.ALL_TABLES:
                    conn.execute(t.delete())

    # -- Prometheus --------------------------------------------------------------------------
    def metrics_snapshot(self, active_window_s: float, now: datetime | None = None) -> MetricsSnapshot:
        """Latest values, last steps and open alerts of the active runs: status 'running'
        and data (or an update) within ``active_window_s``. Runs are named by (project, external
        id): the same id in two projects is two runs."""
        since = (now or utcnow()) - timedelta(seconds=active_window_s)
        active = and_(m.runs.c.status == "running", m.runs.c.updated_at >= since)
        run = (m.projects.c.name.label("project"), m.runs.c.external_id)
        in_project = m.projects.c.id == m.runs.c.project_id
        with self._read() as conn:
            latest = conn.execute(
                select(*run, m.series.c.layer, m.series.c.site, m.series.c.stat, m.latest.c.value)
                .join(m.latest, m.latest.c.series_id == m.series.c.id)
                .join(m.runs, m.runs.c.id == m.series.c.run_id)
                .join(m.projects, in_project)
                .where(active)
            ).all()
            steps = conn.execute(
                select(*run, m.runs.c.last_step)
                .join(m.projects, in_project)
                .where(active, m.runs.c.last_step.is_not(None))
            ).all()
            alerts = conn.execute(
                select(*run, m.alerts.c.rule, m.alerts.c.severity)
                .join(m.runs, m.runs.c.id == m.alerts.c.run_id)
                .join(m.projects, in_project)
                .where(active, m.alerts.c.status == "open")
            ).all()
        return MetricsSnapshot(
            latest=[
                MetricRow(r.project, r.external_id, r.layer, r.site, r.stat, from_db(r.value)) for r in latest
            ],
            last_step={(r.project, r.external_id): r.last_step for r in steps},
            open_alerts=[(r.project, r.external_id, r.rule, r.severity) for r in alerts],
        )
