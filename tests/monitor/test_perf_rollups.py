"""The storage fast paths against full recomputation, on SQLite and PostgreSQL.

Appended batches merge their own chunk summaries into ``rollups`` instead of re-aggregating the
chunks from the points; whatever the mix of appends, overwrites, ranks, gaps, NaN and +/-inf,
the table must hold exactly what aggregating the stored points gives. PostgreSQL's columns
travel as array literals: every float, subnormals and signed zeros included, must read back
bit for bit."""

from __future__ import annotations

import math
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from monitor.store import models as m
from stabmon.wire import Point, RunCreate, encode_value

SPECIAL = [float("nan"), float("inf"), float("-inf"), 5e-324, -0.0, 1.7976931348623157e308, -1e-308]


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _project(store) -> int:  # noqa: ANN001
    token, _ = store.create_token("p")
    return store.resolve_token(token).id


def _sum(xs: list[float]) -> float:
    infs = {x for x in xs if math.isinf(x)}
    if infs:
        return math.nan if len(infs) == 2 else infs.pop()
    return sum(xs)


def _recomputed(store, run_id: str) -> dict:  # noqa: ANN001
    """(key, rank, chunk) -> (n, n_nan, vmin, vmax, vsum, last_step, vlast), from the points."""
    out: dict = {}
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(m.series.c.key, m.points.c.rank, m.points.c.step, m.points.c.value)
            .join(m.series, m.series.c.id == m.points.c.series_id)
            .join(m.runs, m.runs.c.id == m.series.c.run_id)
            .where(m.runs.c.external_id == run_id)
            .order_by(m.points.c.step)
        ).all()
    for key, rank, step, value in rows:
        v = math.nan if value is None else value
        a = out.setdefault((key, rank, step // m.ROLLUP_STEPS), [0, 0, [], step, value])
        a[0] += 1
        if v != v:
            a[1] += 1
        else:
            a[2].append(v)
        if step >= a[3]:
            a[3], a[4] = step, value
    return {
        k: (n, n_nan, min(xs) if xs else None, max(xs) if xs else None, _sum(xs) if xs else None, last, vlast)
        for k, (n, n_nan, xs, last, vlast) in out.items()
    }


def _stored(store, run_id: str) -> dict:  # noqa: ANN001
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(m.series.c.key, m.rollups).join(m.series, m.series.c.id == m.rollups.c.series_id)
        ).all()
    return {
        (r.key, r.rank, r.chunk): (r.n, r.n_nan, r.vmin, r.vmax, r.vsum, r.last_step, r.vlast)
        for r in rows
        if r.key is not None
    }


def _sum_matches(got, want, n: int, n_nan: int) -> bool:  # noqa: ANN001
    if want is None:
        return got is None
    if math.isnan(want) or (math.isinf(want) and got is not None and math.isinf(got)):
        # inf + -inf: NaN (NULL on SQLite); one infinity dominates whatever the order
        return (got is None and n > n_nan) or (got is not None and (got == want or got != got))
    return got is not None and abs(got - want) <= 1e-9 * max(1.0, abs(want))


# Finite sums stay in range here (summation order decides where an overflow lands); the append
# path's overflow is checked by test_appended_sums_past_the_float_range_are_inf.
value = st.floats(min_value=-1e3, max_value=1e3) | st.sampled_from([x for x in SPECIAL if abs(x) < 1e300])
batch = st.lists(
    st.tuples(
        st.integers(0, 3), st.integers(0, 1), st.sampled_from(["a", "b", "layer.0.fc2.l2_mean"]), value
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.tuples(st.booleans(), batch), min_size=1, max_size=6))
def test_rollups_equal_a_full_recomputation(store, batches):
    store.truncate()
    pid = _project(store)
    store.create_run(pid, RunCreate(id="r", name="r"))
    base = 0
    for i, (append, pts) in enumerate(batches):
        # append: steps beyond everything stored (the fast path); else somewhere in the past
        start = base if append else max(0, base - 40)
        by_point: dict = {}
        for off, rank, key, v in pts:
            by_point.setdefault((start + off * 7, rank), {})[key] = encode_value(v)
        points = [Point(step=s, rank=r, values=vals) for (s, r), vals in by_point.items()]
        store.write_points(pid, "r", f"b{i}", points)
        base = max(base, max(s for s, _ in by_point) + 1)
    want, got = _recomputed(store, "r"), _stored(store, "r")
    assert set(got) == set(want)
    for k, (n, n_nan, vmin, vmax, vsum, last, vlast) in want.items():
        g = got[k]
        assert (g[0], g[1], g[5]) == (n, n_nan, last), k
        assert (g[6] is None and vlast is None) or _bits(g[6]) == _bits(vlast) or g[6] != g[6], (k, g, vlast)
        assert g[2] == vmin and g[3] == vmax, (k, g, want[k])
        assert _sum_matches(g[4], vsum, n, n_nan), (k, g, want[k])


def test_appended_values_read_back_bit_for_bit(store):
    pid = _project(store)
    store.create_run(pid, RunCreate(id="r", name="r"))
    xs = SPECIAL + [0.1, 1 / 3, -2.5e-310, 2.2250738585072014e-308, 123456789.123456789]
    store.write_points(
        pid, "r", "b", [Point(step=i, values={"x": encode_value(x)}) for i, x in enumerate(xs)]
    )
    got = store.series(pid, "r", ["x"], max_points=1000).series["x"].last
    assert len(got) == len(xs)
    for x, y in zip(xs, got, strict=True):
        if x == 0.0 and store.dialect == "sqlite":
            assert y == 0.0  # SQLite keeps an integral REAL as an integer: -0.0 reads back as 0.0
            continue
        assert (math.isnan(x) and math.isnan(y)) or _bits(x) == _bits(y), (x, y)
    latest = store.latest(pid, "r")["x"]
    assert latest[0] == len(xs) - 1 and _bits(latest[1]) == _bits(xs[-1])


def test_a_batch_that_rewrites_the_past_re_aggregates_its_chunks(store):
    pid = _project(store)
    store.create_run(pid, RunCreate(id="r", name="r"))
    store.write_points(pid, "r", "b1", [Point(step=s, values={"x": 1.0}) for s in range(40)])
    store.write_points(pid, "r", "b2", [Point(step=s, values={"x": 2.0}) for s in range(20, 60)])
    got = _stored(store, "r")
    assert got[("x", 0, 1)] == (16, 0, 1.0, 2.0, 4 * 1.0 + 12 * 2.0, 31, 2.0)
    assert got[("x", 0, 3)] == (12, 0, 2.0, 2.0, 24.0, 59, 2.0)


def test_appended_sums_past_the_float_range_are_inf(store):
    pid = _project(store)
    store.create_run(pid, RunCreate(id="r", name="r"))
    store.write_points(pid, "r", "b1", [Point(step=0, values={"x": 1.5e308})])
    store.write_points(pid, "r", "b2", [Point(step=1, values={"x": 1.5e308})])  # same chunk, merged
    assert _stored(store, "r")[("x", 0, 0)] == (2, 0, 1.5e308, 1.5e308, math.inf, 1, 1.5e308)
