"""The one batch-write primitive, :meth:`PointsMixin.write_points`, and the cheap reads
around it (series keys, latest values).

One batch is one transaction: the ``ingest_batches`` row (unique per run and batch id, so
concurrent retries of the same batch race on the constraint, not on a lookup), the series
rows for new keys, every value, the ``latest`` upserts, the run's ``last_step``, and, in the
ingest service's unit of work (:mod:`monitor.store.unit`), the detector state and alerts. A 2xx
answer therefore means all of it is committed.

Overwrite semantics: inside one batch a repeated (step, rank, key) keeps the last value
sent; a (step, rank, key) already stored by an earlier batch is overwritten (a run resumed
from a checkpoint re-sends the steps after it, and the new values are the truth).
``latest`` holds, per series, the value at the highest step seen (ties: the lower rank).

Appends: a batch whose steps all lie beyond the run's ``last_step`` (read under the run's lock)
cannot overwrite anything, which is how training jobs send. Its values are plain inserts (on
PostgreSQL one binary ``COPY``, about twice as fast as ``INSERT ... ON CONFLICT`` over
``unnest``, which pays a speculative insertion per row), and its chunk summaries are computed
while the rows are built and merged into ``rollups`` (counts and sums add, min/max combine). Any
other batch upserts its values and re-aggregates the chunks it touched from the points, so
overwritten values never leave a stale summary. Elsewhere on PostgreSQL the columns travel as
array literals (``'{1,2,3}'``): ``repr`` of a float is its shortest exact form, parsed back
exactly by the server, and building the text is a fraction of the cost of binary-dumping tens
of thousands of Python objects.

``points``, ``rollups`` and ``latest`` carry no foreign key to ``series`` (migration 0006): the
check cost PostgreSQL one trigger call per stored value. This method only ever writes them for
series ids it has just read or created under the run's lock, and a trigger on ``series``
deletes a series' rows from all three when the series (or its run) is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, func, select

from monitor.store import models as m
from monitor.store.codec import NAN, from_db, utcnow
from monitor.store.errors import LimitExceeded
from monitor.store.runs import RunRef, dialect_insert
from stabmon.wire import parse_key


class PointLike(Protocol):
    step: int
    rank: int
    values: dict[str, Any]


@dataclass(frozen=True)
class WriteResult:
    accepted: int
    """Values stored (after collapsing repeats of a (step, rank, key) in the batch)."""
    duplicate: bool


@dataclass(frozen=True)
class SeriesInfo:
    key: str
    layer: int | None
    site: str | None
    stat: str
    last_step: int | None


# PostgreSQL: one statement per table, columns as arrays through unnest(), sent as text literals.
_PG_UPSERT_POINTS = (
    "INSERT INTO points (series_id, rank, step, value) "
    "SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::bigint[], %s::double precision[]) "
    "ON CONFLICT (series_id, rank, step) DO UPDATE SET value = excluded.value"
)
_PG_COPY_POINTS = "COPY points (series_id, rank, step, value) FROM STDIN (FORMAT BINARY)"
_PG_COPY_TYPES = ("int8", "int4", "int8", "float8")
_PG_UPSERT_LATEST = (
    "INSERT INTO latest (series_id, rank, step, value) "
    "SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::bigint[], %s::double precision[]) "
    "ON CONFLICT (series_id) DO UPDATE SET rank = excluded.rank, step = excluded.step, "
    "value = excluded.value WHERE excluded.step > latest.step "
    "OR (excluded.step = latest.step AND excluded.rank <= latest.rank)"
)
_ROLLUP_SET = (
    "ON CONFLICT (series_id, rank, chunk) DO UPDATE SET n = excluded.n, n_nan = excluded.n_nan, "
    "vmin = excluded.vmin, vmax = excluded.vmax, vsum = excluded.vsum, last_step = excluded.last_step, "
    "vlast = excluded.vlast"
)
_ROLLUP_SELECT = (
    "INSERT INTO rollups (series_id, rank, chunk, n, n_nan, vmin, vmax, vsum, last_step, vlast) "
    "SELECT g.series_id, g.rank, g.chunk, g.n, g.n_nan, g.vmin, g.vmax, g.vsum, g.last_step, p.value "
    "FROM (SELECT series_id, rank, step / {c} AS chunk, count(*) AS n, count(*) - count({v}) AS n_nan, "
    "min({v}) AS vmin, max({v}) AS vmax, {s} AS vsum, max(step) AS last_step "
    "FROM points WHERE series_id {ids} AND rank = {p} AND step >= {p} AND step <= {p} "
    "GROUP BY series_id, rank, step / {c}) AS g "
    "JOIN points AS p ON p.series_id = g.series_id AND p.rank = g.rank AND p.step = g.last_step "
    "WHERE true "  # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT
)
_PG_V = "NULLIF(value, CAST('NaN' AS double precision))"
# PostgreSQL raises "value out of range: overflow" where a float8 sum passes the float range
# (two values of 1e308), so the sum is taken in numeric and mapped back the IEEE way: beyond
# the range is +/-inf, inf + -inf is NaN (numeric orders NaN above every number: test it first).
_PG_SUM = (
    f"CASE WHEN sum(CAST({_PG_V} AS numeric)) = 'NaN' THEN CAST('NaN' AS double precision) "
    f"WHEN sum(CAST({_PG_V} AS numeric)) > 1.7976931348623157e308 THEN CAST('Infinity' AS double precision) "
    f"WHEN sum(CAST({_PG_V} AS numeric)) < -1.7976931348623157e308 "
    "THEN CAST('-Infinity' AS double precision) "
    f"ELSE CAST(sum(CAST({_PG_V} AS numeric)) AS double precision) END"
)
_PG_ROLLUP = (
    _ROLLUP_SELECT.format(c=m.ROLLUP_STEPS, v=_PG_V, s=_PG_SUM, ids="= ANY(%s::bigint[])", p="%s")
    + _ROLLUP_SET
)
_SQLITE_ROLLUP = (
    _ROLLUP_SELECT.format(c=m.ROLLUP_STEPS, v="value", s="sum(value)", ids="IN ({ids})", p="?") + _ROLLUP_SET
)
_ROLLUP_IDS_PER_STATEMENT = 500

# Writing summaries computed in Python (an appended batch's chunks merged with the stored ones).
_SQLITE_ROLLUP_PUT = (
    "INSERT INTO rollups (series_id, rank, chunk, n, n_nan, vmin, vmax, vsum, last_step, vlast) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) " + _ROLLUP_SET
)
_PG_ROLLUP_PUT = (
    "INSERT INTO rollups (series_id, rank, chunk, n, n_nan, vmin, vmax, vsum, last_step, vlast) "
    "SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::bigint[], %s::integer[], %s::integer[], "
    "%s::double precision[], %s::double precision[], %s::double precision[], %s::bigint[], "
    "%s::double precision[]) " + _ROLLUP_SET
)

_SQLITE_INSERT_POINTS = "INSERT INTO points (series_id, rank, step, value) VALUES (?, ?, ?, ?) "
_SQLITE_UPSERT_POINTS = (
    _SQLITE_INSERT_POINTS + "ON CONFLICT (series_id, rank, step) DO UPDATE SET value = excluded.value"
)
_SQLITE_UPSERT_LATEST = (
    "INSERT INTO latest (series_id, rank, step, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (series_id) DO UPDATE SET rank = excluded.rank, step = excluded.step, "
    "value = excluded.value WHERE excluded.step > latest.step "
    "OR (excluded.step = latest.step AND excluded.rank <= latest.rank)"
)


def _pg_array(col: Sequence[Any]) -> str:
    """A PostgreSQL array literal of ints or floats (None -> NULL). ``repr`` of a float is the
    shortest string that reads back as the same double; 'nan'/'inf'/'-inf' are valid float8."""
    return "{" + ",".join(["NULL" if x is None else repr(x) for x in col]) + "}"


class PointsMixin:
    """Methods on :class:`monitor.store.Store` for points, keys and latest values."""

    def write_points(
        self, project_id: int, run_id: str, batch_id: str, points: Sequence[PointLike]
    ) -> WriteResult:
        """Store one batch in a transaction of its own (what an ingest without detection does;
        the ingest service runs :meth:`IngestUnit.write_points` inside its unit of work)."""
        with self.ingest_unit(project_id, run_id) as unit:
            return unit.write_points(batch_id, points)

    def _write_batch(
        self, conn: Connection, run: RunRef, batch_id: str, points: Sequence[PointLike]
    ) -> WriteResult:
        """Store one batch in ``conn``'s transaction, under the run's lock; a batch id already
        stored for this run is a no-op answered with ``duplicate=True``."""
        # Collapse repeats: last one wins. (PostgreSQL's ON CONFLICT DO UPDATE also refuses
        # to touch one row twice in a statement, so this is needed, not only tidy.)
        flat: dict[tuple[str, int, int], float | int | str] = {}  # wire values, decoded on insert
        for p in points:
            rank, step = p.rank, p.step
            for key, v in p.values.items():
                flat[(key, rank, step)] = v
        stored = conn.execute(
            dialect_insert(conn, m.ingest_batches)
            .values(run_id=run.pk, batch_id=batch_id, n_points=len(flat), received_at=utcnow())
            .on_conflict_do_nothing(index_elements=["run_id", "batch_id"])
            .returning(m.ingest_batches.c.id)
        ).first()
        if stored is None:
            return WriteResult(0, True)
        if flat:
            # Every stored point has step <= runs.last_step (this method is the only writer of
            # both, under the run's lock): a batch beyond it only appends.
            prev_last = conn.execute(select(m.runs.c.last_step).where(m.runs.c.id == run.pk)).scalar()
            append = prev_last is None or min(s for _, _, s in flat) > prev_last
            ids = self._series_ids(conn, run, {k for k, _, _ in flat})
            chunks = self._insert_values(conn, ids, flat, append=append)
            if append:
                self._merge_rollups(conn, chunks, prev_last)
            else:
                self._update_rollups(conn, sorted(set(ids.values())), flat)
            max_step = max(s for _, _, s in flat)
            conn.execute(
                m.runs.update()
                .where(m.runs.c.id == run.pk)
                .values(
                    last_step=func.max(func.coalesce(m.runs.c.last_step, -1), max_step)
                    if conn.dialect.name == "sqlite"
                    else func.greatest(func.coalesce(m.runs.c.last_step, -1), max_step),
                    updated_at=utcnow(),
                )
            )
        return WriteResult(len(flat), False)

    def _series_ids(self, conn: Connection, run: RunRef, keys: Iterable[str]) -> dict[str, int]:
        """key -> series.id for this run, creating the missing series rows."""
        q = select(m.series.c.key, m.series.c.id).where(m.series.c.run_id == run.pk)
        ids = dict(conn.execute(q).tuples().all())
        missing = [k for k in keys if k not in ids]
        limit = getattr(self, "max_series_per_run", None)
        if missing and limit is not None and len(ids) + len(missing) > limit:
            raise LimitExceeded(
                f"series per run limit: run {run.external_id!r} has {len(ids)} series and this batch adds "
                f"{len(missing)} new keys; the limit is {limit} (STABMON_MAX_SERIES_PER_RUN)"
            )
        if missing:
            rows = []
            for k in missing:
                sk = parse_key(k)
                rows.append({"run_id": run.pk, "key": k, "layer": sk.layer, "site": sk.site, "stat": sk.stat})
            conn.execute(
                dialect_insert(conn, m.series).on_conflict_do_nothing(index_elements=["run_id", "key"]), rows
            )
            ids = dict(conn.execute(q).tuples().all())
        return ids

    def _insert_values(
        self,
        conn: Connection,
        ids: dict[str, int],
        flat: dict[tuple[str, int, int], float | int | str],
        append: bool = False,
    ) -> dict[tuple[int, int, int], list]:
        """Store the values and upsert the ``latest`` rows. ``append`` (no stored point can be
        at these steps) inserts instead of upserting and returns the batch's own chunk summaries:
        (series id, rank, chunk) -> [n, n_nan, vmin, vmax, vsum, last_step, value at last_step]."""
        sqlite = conn.dialect.name == "sqlite"
        c = m.ROLLUP_STEPS
        # latest: per series the highest step, ties to the lower rank.
        best: dict[int, tuple[int, int, float | None]] = {}
        chunks: dict[tuple[int, int, int], list] = {}
        rows = []
        for (key, rank, step), x in flat.items():
            sid = ids[key]
            # Hot loop (12,000 values per typical batch): float() also decodes "nan"/"inf"/"-inf".
            v = x if x.__class__ is float else float(x)
            isnan = v != v
            if sqlite and isnan:
                v = None  # SQLite stores NaN as NULL; make it explicit
            rows.append((sid, rank, step, v))
            b = best.get(sid)
            if b is None or step > b[1] or (step == b[1] and rank < b[0]):
                best[sid] = (rank, step, v)
            if append:
                ck = (sid, rank, step // c)
                a = chunks.get(ck)
                if a is None:
                    chunks[ck] = [1, 1, None, None, None, step, v] if isnan else [1, 0, v, v, v, step, v]
                    continue
                a[0] += 1
                if step > a[5]:
                    a[5], a[6] = step, v
                if isnan:
                    a[1] += 1
                elif a[4] is None:
                    a[2] = a[3] = a[4] = v
                else:
                    if v < a[2]:
                        a[2] = v
                    if v > a[3]:
                        a[3] = v
                    a[4] += v
        lrows = [(sid, r, s, v) for sid, (r, s, v) in best.items()]
        if sqlite:
            # Straight to the driver: no per-row SQLAlchemy parameter processing.
            conn.exec_driver_sql(_SQLITE_INSERT_POINTS if append else _SQLITE_UPSERT_POINTS, rows)
            conn.exec_driver_sql(_SQLITE_UPSERT_LATEST, lrows)
            return chunks
        with conn.connection.driver_connection.cursor() as cur:
            if append:
                with cur.copy(_PG_COPY_POINTS) as copy:
                    copy.set_types(_PG_COPY_TYPES)
                    write = copy.write_row
                    for row in rows:
                        write(row)
            else:
                cur.execute(_PG_UPSERT_POINTS, [_pg_array(col) for col in zip(*rows, strict=True)])
            cur.execute(_PG_UPSERT_LATEST, [_pg_array(col) for col in zip(*lrows, strict=True)])
        return chunks

    def _merge_rollups(
        self, conn: Connection, chunks: dict[tuple[int, int, int], list], prev_last: int | None
    ) -> None:
        """Add an appended batch's chunk summaries (from :meth:`_insert_values`) to ``rollups``.

        Only the chunk holding ``prev_last`` (the run's last stored step) can already have a row;
        those rows are read and combined here, in Python, where a sum past the float range is inf
        rather than PostgreSQL's overflow error."""
        if not chunks:
            return
        sqlite = conn.dialect.name == "sqlite"
        if prev_last is not None:
            edge = prev_last // m.ROLLUP_STEPS
            sids = sorted({sid for sid, _, chunk in chunks if chunk == edge})
            r = m.rollups.c
            for i in range(0, len(sids), _ROLLUP_IDS_PER_STATEMENT):
                stored = conn.execute(
                    select(r.series_id, r.rank, r.chunk, r.n, r.n_nan, r.vmin, r.vmax, r.vsum).where(
                        r.series_id.in_(sids[i : i + _ROLLUP_IDS_PER_STATEMENT]), r.chunk == edge
                    )
                ).tuples()
                for sid, rank, chunk, n, n_nan, vmin, vmax, vsum in stored:
                    a = chunks.get((sid, rank, chunk))
                    if a is None:
                        continue
                    if n > n_nan:
                        if vsum is None:
                            vsum = NAN  # SQLite: a NULL sum over non-NaN values is a NaN sum
                        a[4] = vsum if a[4] is None else a[4] + vsum
                        a[2] = vmin if a[2] is None or vmin < a[2] else a[2]
                        a[3] = vmax if a[3] is None or vmax > a[3] else a[3]
                    a[0] += n
                    a[1] += n_nan
                    # last_step and vlast stay the batch's: every batch step is beyond the stored ones
        rows = []
        for (sid, rank, chunk), (n, n_nan, vmin, vmax, vsum, last, vlast) in chunks.items():
            if sqlite and vsum is not None and vsum != vsum:
                vsum = None  # inf + -inf: a NaN sum, stored as NULL on SQLite
            rows.append((sid, rank, chunk, n, n_nan, vmin, vmax, vsum, last, vlast))
        if sqlite:
            conn.exec_driver_sql(_SQLITE_ROLLUP_PUT, rows)
            return
        with conn.connection.driver_connection.cursor() as cur:
            cur.execute(_PG_ROLLUP_PUT, [_pg_array(col) for col in zip(*rows, strict=True)])

    def _update_rollups(
        self, conn: Connection, sids: list[int], flat: dict[tuple[str, int, int], float | int | str]
    ) -> None:
        """Re-aggregate every ROLLUP_STEPS-step chunk the batch touched, from the points
        themselves, so overwritten values never leave a stale summary."""
        extent: dict[int, tuple[int, int]] = {}  # rank -> (min step, max step)
        for _, rank, step in flat:
            lo_hi = extent.get(rank)
            extent[rank] = (step, step) if lo_hi is None else (min(lo_hi[0], step), max(lo_hi[1], step))
        pg = conn.dialect.name == "postgresql"
        sql = _PG_ROLLUP if pg else _SQLITE_ROLLUP
        c = m.ROLLUP_STEPS
        for rank, (lo, hi) in extent.items():
            lo, hi = (lo // c) * c, (hi // c) * c + c - 1
            for i in range(0, len(sids), _ROLLUP_IDS_PER_STATEMENT):
                part = sids[i : i + _ROLLUP_IDS_PER_STATEMENT]
                if pg:
                    with conn.connection.driver_connection.cursor() as cur:
                        cur.execute(sql, (part, rank, lo, hi), binary=True)
                else:
                    conn.exec_driver_sql(sql.format(ids=",".join("?" * len(part))), (*part, rank, lo, hi))

    # -- reads ---------------------------------------------------------------------------
    def keys(self, project_id: int, run_id: str) -> list[SeriesInfo]:
        """Every series of the run, sorted by key, with the step of its latest value."""
        with self._read() as conn:
            run = self._check_run(conn, project_id, run_id)
            rows = conn.execute(
                select(m.series.c.key, m.series.c.layer, m.series.c.site, m.series.c.stat, m.latest.c.step)
                .outerjoin(m.latest, m.latest.c.series_id == m.series.c.id)
                .where(m.series.c.run_id == run.pk)
                .order_by(m.series.c.key)
            ).all()
        return [SeriesInfo(r.key, r.layer, r.site, r.stat, r.step) for r in rows]

    def latest(self, project_id: int, run_id: str) -> dict[str, tuple[int, float]]:
        """key -> (step, value) from the latest-value table (NaN/inf as floats)."""
        with self._read() as conn:
            run = self._check_run(conn, project_id, run_id)
            rows = conn.execute(
                select(m.series.c.key, m.latest.c.step, m.latest.c.value)
                .join(m.latest, m.latest.c.series_id == m.series.c.id)
                .where(m.series.c.run_id == run.pk)
                .order_by(m.series.c.key)
            ).all()
        return {r.key: (r.step, from_db(r.value)) for r in rows}
