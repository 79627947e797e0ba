"""Retention: :meth:`RetentionMixin.prune` drops the raw points of finished runs past an age.

A run's raw ``points`` are most of the database (one row per value) and are read at full
resolution only when a query asks for fewer steps than ``max_points``. Its ``rollups`` (one row
per series, rank and 16-step chunk: count, NaN count, min, max, sum, last value) are 1/16 of
the rows and answer every downsampled read. Pruning a run deletes its ``points`` and its
``ingest_batches`` (they only make a live run's retried batches idempotent) and stamps
``runs.points_pruned_at``; the run, its ``series``, ``rollups``, ``latest``, alerts, detector
state and delivery log stay. Series reads of a pruned run answer from the rollups, at a bucket
width of at least 16 steps, and say so (:attr:`monitor.store.series.SeriesResult.pruned`).

A run is pruned when its status is not ``running`` and its ``updated_at`` (the last
registration change or status/summary update) is older than the cutoff. Deletes go in
transactions of at most about ``batch_rows`` rows (planned from the rollups' counts, as step
ranges on the points' primary key), so a big prune holds SQLite's write lock for a fraction of
a second at a time and live ingest interleaves; each transaction re-reads the run's status (on
PostgreSQL under the same row lock a batch write takes) and stops if it is running again.

A dry run counts exactly what a real run would delete now, and deletes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, func, select, text

from monitor.store import models as m
from monitor.store.codec import aware, utcnow

DEFAULT_BATCH_ROWS = 20_000


@dataclass
class PrunedRun:
    project: str
    run_id: str  # the external id
    status: str
    updated_at: datetime
    points: int
    ingest_batches: int


@dataclass
class PruneReport:
    """What a prune removed (or, with ``dry_run``, would remove), per table and per run."""

    cutoff: datetime
    dry_run: bool
    runs: list[PrunedRun] = field(default_factory=list)
    points: int = 0
    ingest_batches: int = 0
    transactions: int = 0
    largest_transaction: int = 0  # the most rows one delete transaction removed
    vacuumed: bool = False
    db_bytes_before: int | None = None  # SQLite: the file's pages (page_count * page_size)
    db_bytes_after: int | None = None

    def as_dict(self) -> dict:
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "runs_affected": len(self.runs),
            "deleted": {"points": self.points, "ingest_batches": self.ingest_batches},
            "transactions": self.transactions,
            "largest_transaction": self.largest_transaction,
            "vacuumed": self.vacuumed,
            "db_bytes_before": self.db_bytes_before,
            "db_bytes_after": self.db_bytes_after,
            "runs": [
                {
                    "project": r.project,
                    "run_id": r.run_id,
                    "status": r.status,
                    "updated_at": r.updated_at.isoformat(),
                    "points": r.points,
                    "ingest_batches": r.ingest_batches,
                }
                for r in self.runs
            ],
        }


def _run_points(pk: str):  # noqa: ANN202
    """``points`` rows of the run with internal key ``pk``."""
    return m.points.c.series_id.in_(select(m.series.c.id).where(m.series.c.run_id == pk))


class RetentionMixin:
    """Retention on :class:`monitor.store.Store`."""

    def prune(
        self,
        older_than: timedelta,
        *,
        dry_run: bool = False,
        vacuum: bool = False,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        now: datetime | None = None,
    ) -> PruneReport:
        """Delete the raw points and ingest batches of every run that is not ``running`` and
        was last updated before ``now - older_than``; keep everything else of it. ``vacuum``
        (after a real prune) gives the freed pages back: SQLite ``VACUUM`` (rewrites the file;
        needs as much free disk as the database), PostgreSQL ``VACUUM ANALYZE`` of the two
        tables (space reusable, the files do not shrink)."""
        if older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        report = PruneReport(cutoff=(now or utcnow()) - older_than, dry_run=dry_run)
        report.db_bytes_before = self._db_bytes()
        r = m.runs.c
        with self._read() as conn:
            candidates = conn.execute(
                select(
                    r.id,
                    r.external_id,
                    r.status,
                    r.updated_at,
                    r.points_pruned_at,
                    m.projects.c.name.label("project"),
                )
                .join(m.projects, m.projects.c.id == r.project_id)
                .where(r.status != "running", r.updated_at < report.cutoff)
                .order_by(r.updated_at, r.id)
            ).all()
        for run in candidates:
            with self._read() as conn:
                n_points, n_batches = self._prune_counts(conn, run.id)
            if (
                not n_points
                and not n_batches
                and (run.points_pruned_at is not None or not self._has_series(run.id))
            ):
                continue  # nothing to delete, and pruned already (or no data at all)
            if not dry_run:
                done = self._prune_run(run.id, report.cutoff, batch_rows, report)
                if done is None:  # running again, or updated since: left alone
                    continue
                n_points, n_batches = done
            updated = aware(run.updated_at)
            report.runs.append(
                PrunedRun(run.project, run.external_id, run.status, updated, n_points, n_batches)
            )
            report.points += n_points
            report.ingest_batches += n_batches
        if vacuum and not dry_run:
            self._vacuum()
            report.vacuumed = True
        report.db_bytes_after = self._db_bytes()
        return report

    @staticmethod
    def _prune_counts(conn: Connection, pk: str) -> tuple[int, int]:
        n_points = conn.execute(
            select(func.count()).select_from(m.points).where(_run_points(pk))
        ).scalar_one()
        n_batches = conn.execute(
            select(func.count()).select_from(m.ingest_batches).where(m.ingest_batches.c.run_id == pk)
        ).scalar_one()
        return int(n_points), int(n_batches)

    def _has_series(self, pk: str) -> bool:
        with self._read() as conn:
            return (
                conn.execute(select(m.series.c.id).where(m.series.c.run_id == pk).limit(1)).first()
                is not None
            )

    def _still_prunable(self, conn: Connection, pk: str, cutoff: datetime) -> bool:
        q = select(m.runs.c.id).where(
            and_(m.runs.c.id == pk, m.runs.c.status != "running", m.runs.c.updated_at < cutoff)
        )
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()  # the lock a batch write of this run takes (RunsMixin._check_run)
        return conn.execute(q).first() is not None

    def _prune_run(
        self, pk: str, cutoff: datetime, batch_rows: int, report: PruneReport
    ) -> tuple[int, int] | None:
        """Delete one run's points in bounded transactions, then its ingest batches; returns
        the rows deleted, or None if the run was no longer prunable at the first transaction."""
        with self._read() as conn:
            plan = self._plan(conn, pk, batch_rows)
        n_points = n_batches = 0
        first = True
        for ranges in [*plan, []]:  # the last, empty one: the leftovers sweep and ingest batches
            with self._write() as conn:
                if not self._still_prunable(conn, pk, cutoff):
                    return None if first else (n_points, n_batches)
                if first:
                    conn.execute(m.runs.update().where(m.runs.c.id == pk).values(points_pruned_at=utcnow()))
                    first = False
                p, deleted = m.points.c, 0
                for sid, rank, lo, hi in ranges:
                    in_range = (p.series_id == sid, p.rank == rank, p.step >= lo, p.step <= hi)
                    deleted += conn.execute(m.points.delete().where(*in_range)).rowcount
                if not ranges:
                    # Points the rollups do not account for (none, while they are exact).
                    deleted += conn.execute(m.points.delete().where(_run_points(pk))).rowcount
                    n_batches += conn.execute(
                        m.ingest_batches.delete().where(m.ingest_batches.c.run_id == pk)
                    ).rowcount
                n_points += deleted
                report.transactions += 1
                report.largest_transaction = max(report.largest_transaction, deleted)
        return n_points, n_batches

    @staticmethod
    def _plan(conn: Connection, pk: str, batch_rows: int) -> list[list[tuple[int, int, int, int]]]:
        """The run's points as transactions of (series_id, rank, first step, last step) ranges
        of about ``batch_rows`` rows each, from the rollups' per-chunk counts (1/16 of the rows);
        a range never splits a chunk, so a transaction holds at most batch_rows + 15 rows."""
        c = m.ROLLUP_STEPS
        ru = m.rollups.c
        rows = conn.execute(
            select(ru.series_id, ru.rank, ru.chunk, ru.n)
            .where(ru.series_id.in_(select(m.series.c.id).where(m.series.c.run_id == pk)))
            .order_by(ru.series_id, ru.rank, ru.chunk)
        ).tuples()
        plan: list[list[tuple[int, int, int, int]]] = []
        cur: list[tuple[int, int, int, int]] = []
        in_cur = 0
        span: list[int] | None = None  # [series_id, rank, first chunk, last chunk] being extended
        for sid, rank, chunk, n in rows:
            if span is not None and (span[0], span[1]) != (sid, rank):
                cur.append((span[0], span[1], span[2] * c, span[3] * c + c - 1))
                span = None
            if span is None:
                span = [sid, rank, chunk, chunk]
            span[3] = chunk
            in_cur += n
            if in_cur >= batch_rows:
                cur.append((span[0], span[1], span[2] * c, span[3] * c + c - 1))
                plan.append(cur)
                cur, in_cur, span = [], 0, None
        if span is not None:
            cur.append((span[0], span[1], span[2] * c, span[3] * c + c - 1))
        if cur:
            plan.append(cur)
        return plan

    def _db_bytes(self) -> int | None:
        if self.dialect != "sqlite":
            return None
        with self._read() as conn:
            pages = conn.execute(text("PRAGMA page_count")).scalar_one()
            size = conn.execute(text("PRAGMA page_size")).scalar_one()
        return int(pages) * int(size)

    def _vacuum(self) -> None:
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                # On the driver's connection, outside any transaction (SQLAlchemy would begin one;
                # the engine sets pysqlite to autocommit, see monitor.store.engine).
                raw = conn.connection.driver_connection
                raw.execute("VACUUM")
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.exec_driver_sql("VACUUM ANALYZE points, ingest_batches")
