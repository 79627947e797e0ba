"""Series reads with server-side downsampling that keeps spikes.

A query for N steps with ``max_points`` M splits the step range into at most M buckets of
``width = ceil(N / M)`` steps and returns, per bucket, the min, the max, the mean and the
last value (plus the count and the NaN count): a one-step spike survives as the bucket's max,
a NaN as ``nan_count`` (and as ``last`` if it came last), which an average alone would hide.
Buckets narrower than ``ROLLUP_STEPS`` (16) are aggregated from the points in SQL, joined back
on the primary key for the last value; wider ones are folded from the ``rollups`` table of exact
16-step chunk summaries (each carrying its last value), which reads 1/16 of the rows: the range is then
aligned outward to chunk boundaries and the width rounded up to a multiple of 16 (the
response's ``from``, ``to`` and ``bucket_width`` say so).

NaN semantics are the same on both backends: min/max/mean are over the non-NaN values
(inf included) and are NaN only when a bucket holds nothing but NaN. On PostgreSQL, where
NaN sorts above every number, ``NULLIF(value, 'NaN')`` makes it behave like SQLite's NULL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, func, select, text, union_all

from monitor.store import models as m
from monitor.store.codec import NAN, from_db

DEFAULT_MAX_POINTS = 1000
MAX_MAX_POINTS = 20_000


@dataclass
class Buckets:
    """One series over a step range, columnar. Without downsampling (width 1) every bucket
    is one step and min == max == mean == last."""

    step: list[int] = field(default_factory=list)  # the bucket's last step with data
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    nan_count: list[int] = field(default_factory=list)


@dataclass
class SeriesResult:
    rank: int
    from_step: int | None
    to_step: int | None
    bucket_width: int
    series: dict[str, Buckets]
    pruned: bool = False
    """The run's raw points were dropped (``stabmon db prune``): the answer comes from the
    16-step chunk summaries, so ``bucket_width`` is at least ``ROLLUP_STEPS``."""


def _agg_sql(dialect: str) -> str:
    v = "NULLIF(value, CAST('NaN' AS double precision))" if dialect == "postgresql" else "value"
    return (
        "SELECT a.series_id, a.step_last, a.vmin, a.vmax, a.vmean, a.n, a.n_nan, p.value AS vlast "
        "FROM (SELECT series_id, (step - :lo) / :w AS b, max(step) AS step_last, "
        f"min({v}) AS vmin, max({v}) AS vmax, avg({v}) AS vmean, count(*) AS n, "
        f"count(*) - count({v}) AS n_nan "
        "FROM points WHERE series_id IN :ids AND rank = :rank AND step >= :lo AND step <= :hi "
        "GROUP BY series_id, (step - :lo) / :w) AS a "
        "JOIN points AS p ON p.series_id = a.series_id AND p.rank = :rank AND p.step = a.step_last "
        "ORDER BY a.series_id, a.step_last"
    )


def _rollup_rows_sql() -> str:
    return (
        "SELECT series_id, chunk, n, n_nan, vmin, vmax, vsum, last_step, vlast FROM rollups "
        "WHERE series_id IN :ids AND rank = :rank AND chunk >= :c0 AND chunk <= :c1 "
        "ORDER BY series_id, chunk"
    )


class SeriesMixin:
    """The series query on :class:`monitor.store.Store`."""

    def series(
        self,
        project_id: int,
        run_id: str,
        keys: Sequence[str],
        *,
        from_step: int | None = None,
        to_step: int | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        rank: int = 0,
    ) -> SeriesResult:
        """Values of ``keys`` over [from_step, to_step] (inclusive; open ends default to the
        data's extent), at most ``max_points`` buckets per key. Unknown keys come back empty."""
        if max_points < 1:
            raise ValueError("max_points must be >= 1")
        max_points = min(max_points, MAX_MAX_POINTS)
        with self._read() as conn:
            run = self._check_run(conn, project_id, run_id)
            pruned = (
                conn.execute(select(m.runs.c.points_pruned_at).where(m.runs.c.id == run.pk)).scalar()
                is not None
            )
            ids = dict(
                conn.execute(
                    select(m.series.c.id, m.series.c.key).where(
                        m.series.c.run_id == run.pk, m.series.c.key.in_(list(keys))
                    )
                )
                .tuples()
                .all()
            )
            out = {k: Buckets() for k in keys}
            lo, hi = from_step, to_step
            if ids and (lo is None or hi is None):
                extent = self._rollup_extent if pruned else self._extent
                emin, emax = extent(conn, list(ids), rank, lo, hi)
                lo = emin if lo is None else lo
                hi = emax if hi is None else hi
            if not ids or lo is None or hi is None or hi < lo:
                return SeriesResult(rank, lo, hi, 1, out, pruned)
            width = max(1, math.ceil((hi - lo + 1) / max_points))
            if width == 1 and not pruned:
                self._raw(conn, ids, out, rank, lo, hi)
            elif width < m.ROLLUP_STEPS and not pruned:
                self._aggregated(conn, ids, out, rank, lo, hi, width)
            else:
                # Whole chunks: align the range outward and the width up to ROLLUP_STEPS.
                c = m.ROLLUP_STEPS
                lo, hi = (lo // c) * c, (hi // c) * c + c - 1
                width = math.ceil(width / c) * c
                while math.ceil((hi - lo + 1) / width) > max_points:
                    width += c
                self._from_rollups(conn, ids, out, rank, lo, hi, width)
        return SeriesResult(rank, lo, hi, width, out, pruned)

    @staticmethod
    def _extent(conn: Connection, sids: list[int], rank: int, lo, hi):  # noqa: ANN001, ANN205
        """(first step, last step) with data among ``sids`` within the given bounds. One
        ``min``/``max`` per series, each answered from the primary-key index by a single probe
        (a min/max over ``series_id IN (...)`` would scan every point of those series)."""
        p = m.points.c
        bounds = [p.rank == rank]
        if lo is not None:
            bounds.append(p.step >= lo)
        if hi is not None:
            bounds.append(p.step <= hi)
        parts = [
            select(
                select(func.min(p.step)).where(p.series_id == sid, *bounds).scalar_subquery().label("a"),
                select(func.max(p.step)).where(p.series_id == sid, *bounds).scalar_subquery().label("b"),
            )
            for sid in sids
        ]
        sub = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
        return conn.execute(select(func.min(sub.c.a), func.max(sub.c.b))).one()

    @staticmethod
    def _rollup_extent(conn: Connection, sids: list[int], rank: int, lo, hi):  # noqa: ANN001, ANN205
        """:meth:`_extent` of a pruned run, from its rollups: (first chunk's first step, last
        step) among ``sids`` within the given bounds (widened to whole chunks)."""
        c, ru = m.ROLLUP_STEPS, m.rollups.c
        bounds = [ru.series_id.in_(sids), ru.rank == rank]
        if lo is not None:
            bounds.append(ru.chunk >= lo // c)
        if hi is not None:
            bounds.append(ru.chunk <= hi // c)
        first, last = conn.execute(select(func.min(ru.chunk), func.max(ru.last_step)).where(*bounds)).one()
        return (None if first is None else first * c), last

    @staticmethod
    def _raw(conn: Connection, ids: dict[int, str], out: dict[str, Buckets], rank, lo, hi) -> None:  # noqa: ANN001
        rows = conn.execute(
            select(m.points.c.series_id, m.points.c.step, m.points.c.value)
            .where(
                m.points.c.series_id.in_(list(ids)),
                m.points.c.rank == rank,
                m.points.c.step >= lo,
                m.points.c.step <= hi,
            )
            .order_by(m.points.c.series_id, m.points.c.step)
        ).tuples()
        for sid, step, value in rows:
            b = out[ids[sid]]
            x = from_db(value)
            isnan = x != x
            b.step.append(step)
            b.min.append(x)
            b.max.append(x)
            b.mean.append(x)
            b.last.append(x)
            b.count.append(1)
            b.nan_count.append(1 if isnan else 0)

    @staticmethod
    def _from_rollups(conn: Connection, ids, out, rank, lo, hi, width) -> None:  # noqa: ANN001
        """Buckets of whole chunks, from the rollup table (``lo``/``width`` chunk-aligned).

        The chunk rows come back in (series, chunk) order and are folded into buckets here: a
        bucket's last value is its last chunk's ``vlast``, so no point is read. (Folding 1,250
        rows per key in Python costs less than the per-bucket lookups the SQL form needed.)"""
        c = m.ROLLUP_STEPS
        stmt = text(_rollup_rows_sql()).bindparams(bindparam("ids", expanding=True))
        params = {"ids": list(ids), "rank": rank, "c0": lo // c, "c1": hi // c}
        # The bucket being folded: [series, bucket, n, n_nan, vmin, vmax, vsum, last_step, vlast];
        # vmin/vmax/vsum None while no non-NaN value was seen.
        cur: list | None = None

        def emit(a: list) -> None:
            b = out[ids[a[0]]]
            n, n_nan, vsum = a[2], a[3], a[6]
            b.step.append(a[7])
            b.min.append(from_db(a[4]))
            b.max.append(from_db(a[5]))
            b.mean.append(vsum / (n - n_nan) if n > n_nan and vsum is not None else NAN)
            b.last.append(from_db(a[8]))
            b.count.append(n)
            b.nan_count.append(n_nan)

        for sid, chunk, n, n_nan, vmin, vmax, vsum, last_step, vlast in conn.execute(stmt, params).fetchall():
            n, n_nan = int(n), int(n_nan)
            if n > n_nan and vsum is None:
                vsum = NAN  # SQLite: a NULL sum over non-NaN values is a NaN sum (inf + -inf)
            bucket = (chunk * c - lo) // width
            if cur is None or cur[0] != sid or cur[1] != bucket:
                if cur is not None:
                    emit(cur)
                cur = [sid, bucket, n, n_nan, vmin, vmax, vsum if n > n_nan else None, int(last_step), vlast]
                continue
            cur[2] += n
            cur[3] += n_nan
            if vmin is not None and (cur[4] is None or vmin < cur[4]):
                cur[4] = vmin
            if vmax is not None and (cur[5] is None or vmax > cur[5]):
                cur[5] = vmax
            if n > n_nan:
                cur[6] = vsum if cur[6] is None else cur[6] + vsum
            cur[7], cur[8] = int(last_step), vlast  # chunks ascend: the later chunk holds the last step
        if cur is not None:
            emit(cur)

    @staticmethod
    def _aggregated(conn: Connection, ids, out, rank, lo, hi, width) -> None:  # noqa: ANN001
        stmt = text(_agg_sql(conn.dialect.name)).bindparams(bindparam("ids", expanding=True))
        rows = conn.execute(stmt, {"ids": list(ids), "rank": rank, "lo": lo, "hi": hi, "w": width}).tuples()
        for sid, step_last, vmin, vmax, vmean, n, n_nan, vlast in rows:
            b = out[ids[sid]]
            b.step.append(int(step_last))
            b.min.append(from_db(vmin))
            b.max.append(from_db(vmax))
            b.mean.append(from_db(vmean))
            b.last.append(from_db(vlast))
            b.count.append(int(n))
            b.nan_count.append(int(n_nan))
