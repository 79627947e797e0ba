"""Retention (``Store.prune``, ``stabmon db prune``) on SQLite and PostgreSQL: a dry run changes
nothing and counts what the real prune then deletes; running and recent runs are untouched;
series reads of a pruned run answer from the rollups with the same envelope per chunk."""

from __future__ import annotations

import json
import math
import time
from datetime import timedelta

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from monitor.store import Store, migrate
from monitor.store.codec import utcnow
from monitor.store.engine import make_engine
from stabmon.wire import Point, RunCreate, RunUpdate
from stabmon_cli import app

STEPS = 200
KEYS = ("loss", "grad_norm")
DAY90 = timedelta(days=90)


def _fill(store: Store, pid: int, run_id: str, status: str | None, ranks: int = 1, batches: int = 4) -> int:
    """A run with ``KEYS`` over STEPS steps per rank (a spike and NaNs in it), in ``batches``
    batches; returns the number of points stored."""
    store.create_run(pid, RunCreate(id=run_id, name=run_id))
    per = STEPS // batches
    for b in range(batches):
        pts = []
        for step in range(b * per, (b + 1) * per):
            for rank in range(ranks):
                loss = 1e6 if step == 77 else (math.nan if step % 50 == 3 else 3.0 - step / 100 + rank)
                pts.append(Point(step=step, rank=rank, values={"loss": loss, "grad_norm": float(step % 9)}))
        store.write_points(pid, run_id, f"{run_id}-b{b}", pts)
    if status is not None:
        store.update_run(pid, run_id, RunUpdate(status=status))
    return STEPS * ranks * len(KEYS)


def _raw(store: Store, pid: int, run_id: str, rank: int = 0):  # noqa: ANN202
    return store.series(pid, run_id, list(KEYS), max_points=10_000, rank=rank)


# (Results are compared by repr: NaN == NaN is false, and reads hold NaNs.)
def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture
def runs(store):  # noqa: ANN001, ANN201
    """'old' (finished, 2 ranks) and 'crashed' (diverged) updated before the cutoff; 'live'
    (running) and 'young' (finished after the cutoff). Returns (pid, cutoff's `now`, points)."""
    pid = store.ensure_project("alpha")
    n_old = _fill(store, pid, "old", "finished", ranks=2)
    n_crashed = _fill(store, pid, "crashed", "diverged", batches=2)
    _fill(store, pid, "live", None)
    time.sleep(0.05)
    mid = utcnow()
    time.sleep(0.05)
    _fill(store, pid, "young", "finished")
    return pid, mid + DAY90, {"old": n_old, "crashed": n_crashed}


def test_dry_run_counts_what_the_prune_then_deletes(store, runs):
    pid, now, expected = runs
    before = {r: _raw(store, pid, r) for r in ("old", "crashed", "live", "young")}
    dry = store.prune(DAY90, dry_run=True, now=now)
    assert dry.dry_run and dry.transactions == 0
    assert {r.run_id: (r.points, r.ingest_batches) for r in dry.runs} == {
        "old": (expected["old"], 4),
        "crashed": (expected["crashed"], 2),
    }
    assert (dry.points, dry.ingest_batches) == (sum(expected.values()), 6)
    # Nothing changed: raw reads of every run as before, and a second dry run says the same.
    assert repr({r: _raw(store, pid, r) for r in before}) == repr(before)
    assert store.prune(DAY90, dry_run=True, now=now).as_dict() == dry.as_dict()

    real = store.prune(DAY90, now=now)
    assert not real.dry_run
    assert (real.points, real.ingest_batches) == (dry.points, dry.ingest_batches)
    assert [(r.run_id, r.points, r.ingest_batches) for r in real.runs] == [
        (r.run_id, r.points, r.ingest_batches) for r in dry.runs
    ]
    # Done: nothing left to prune; the running and the recent run read exactly as before.
    again = store.prune(DAY90, dry_run=True, now=now)
    assert (again.runs, again.points, again.ingest_batches) == ([], 0, 0)
    for r in ("live", "young"):
        res = _raw(store, pid, r)
        assert repr(res) == repr(before[r]) and not res.pruned and res.bucket_width == 1
    # The live run's batch ids still make its retries idempotent; the pruned runs keep the rest.
    assert store.write_points(pid, "live", "live-b0", [Point(step=0, values={"loss": 1.0})]).duplicate
    assert store.get_run(pid, "old").last_step == STEPS - 1
    assert set(store.latest(pid, "old")) == set(KEYS)
    assert store.get_run(pid, "old").status == "finished"


def test_a_running_run_is_never_pruned(store, runs):
    pid, now, _ = runs
    far = store.prune(timedelta(0), dry_run=True, now=now + timedelta(days=3650))
    assert "live" not in {r.run_id for r in far.runs} and "young" in {r.run_id for r in far.runs}
    store.prune(timedelta(0), now=now + timedelta(days=3650))
    assert not _raw(store, pid, "live").pruned and _raw(store, pid, "live").bucket_width == 1


def test_bounded_transactions_delete_the_same_rows(store, runs):
    pid, now, expected = runs
    report = store.prune(DAY90, batch_rows=100, now=now)
    assert report.points == sum(expected.values())
    # old: 800 points, crashed: 400, in transactions of 100 rows (or up to a chunk more), and
    # one more per run for its ingest batches and any point the rollups missed (none).
    assert 100 <= report.largest_transaction <= 100 + 15
    assert 800 // 115 + 400 // 115 + 2 <= report.transactions <= 800 // 100 + 400 // 100 + 4
    assert store.prune(DAY90, dry_run=True, now=now).points == 0


def test_pruned_reads_answer_from_rollups_with_the_same_envelope(store, runs):
    pid, now, _ = runs
    raw = {rank: _raw(store, pid, "old", rank) for rank in (0, 1)}
    coarse = store.series(pid, "old", list(KEYS), max_points=5)
    window = store.series(pid, "old", ["loss"], from_step=40, to_step=130, max_points=3)
    store.prune(DAY90, now=now)

    for rank in (0, 1):
        res = _raw(store, pid, "old", rank)
        assert res.pruned and res.bucket_width == 16
        assert (res.from_step, res.to_step) == (0, 207)
        for key in KEYS:
            b, r = res.series[key], raw[rank].series[key]
            assert len(b.step) == math.ceil(STEPS / 16)
            for i, last_step in enumerate(b.step):
                chunk = [v for s, v in zip(r.step, r.min, strict=True) if s // 16 == i]
                finite = [v for v in chunk if not math.isnan(v)]
                assert last_step == min(i * 16 + 15, STEPS - 1)
                assert _same(b.min[i], min(finite) if finite else math.nan)
                assert _same(b.max[i], max(finite) if finite else math.nan)
                assert b.count[i] == len(chunk) and b.nan_count[i] == len(chunk) - len(finite)
                assert _same(b.last[i], chunk[-1])
    assert 1e6 in _raw(store, pid, "old").series["loss"].max  # the spike survives
    # Downsampled reads, which never touched the points, answer exactly as before.
    got = store.series(pid, "old", list(KEYS), max_points=5)
    shape = (got.from_step, got.to_step, got.bucket_width, repr(got.series))
    assert shape == (coarse.from_step, coarse.to_step, coarse.bucket_width, repr(coarse.series))
    got = store.series(pid, "old", ["loss"], from_step=40, to_step=130, max_points=3)
    assert repr(got.series) == repr(window.series) and got.pruned and not window.pruned
    # A narrow window is widened to its chunks instead of coming back empty.
    narrow = store.series(pid, "old", ["loss"], from_step=20, to_step=21)
    assert (narrow.from_step, narrow.to_step, narrow.bucket_width) == (16, 31, 16)
    assert narrow.series["loss"].count == [16]
    assert store.series(pid, "old", ["nope"]).series["nope"].step == []


def test_prune_refuses_a_negative_age(store):
    with pytest.raises(ValueError, match="older_than"):
        store.prune(timedelta(days=-1))


def test_api_says_a_pruned_run_is_pruned(api):
    api.create_run("r1")
    pts = [{"step": s, "values": {"loss": float(s)}} for s in range(40)]
    assert api.post_points("r1", "b0", pts).status_code == 200
    assert (
        api.client.patch("/api/v1/runs/r1", json={"status": "finished"}, headers=api.headers).status_code
        == 200
    )
    url = "/api/v1/runs/r1/series?keys=loss"
    before = api.client.get(url, headers=api.headers).json()
    assert (before["pruned"], before["bucket_width"]) == (False, 1)
    api.store.prune(timedelta(0), now=utcnow() + timedelta(seconds=1))
    after = api.client.get(url, headers=api.headers).json()
    assert (after["pruned"], after["downsampled"], after["bucket_width"]) == (True, True, 16)
    assert after["series"]["loss"]["max"] == [15.0, 31.0, 39.0]
    assert after["series"]["loss"]["min"] == [0.0, 16.0, 32.0]


@pytest.fixture
def cli(tmp_path):  # noqa: ANN201
    url = f"sqlite:///{tmp_path / 'p.db'}"
    migrate.upgrade(url)
    runner = CliRunner()

    def invoke(*args: str):  # noqa: ANN202
        return runner.invoke(app, ["db", "prune", *args, "--db", url])

    return url, invoke


def test_cli_end_to_end_on_sqlite(cli):
    url, invoke = cli
    store = Store(url, pool_size=1)
    try:
        pid = store.ensure_project("alpha")
        n = _fill(store, pid, "done", "finished")
        _fill(store, pid, "live", None)
        raw = _raw(store, pid, "done")
    finally:
        store.dispose()
    r = invoke("--older-than", "0s", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    dry = json.loads(r.output)
    assert dry["dry_run"] and dry["deleted"] == {"points": n, "ingest_batches": 4}
    assert [x["run_id"] for x in dry["runs"]] == ["done"]
    r = invoke("--older-than", "0s", "--dry-run")
    assert r.exit_code == 0 and "would delete" in r.output and "done" in r.output
    r = invoke("--older-than", "90d")
    assert r.exit_code == 0 and "deleted: 0 points" in r.output
    r = invoke("--older-than", "0s", "--vacuum", "--json")
    assert r.exit_code == 0, r.output
    real = json.loads(r.output)
    assert real["deleted"] == dry["deleted"] and real["vacuumed"]
    assert real["db_bytes_after"] < real["db_bytes_before"]
    store = Store(url, pool_size=1)
    try:
        res = _raw(store, pid, "done")
        assert res.pruned and max(res.series["loss"].max) == max(raw.series["loss"].max)
        assert not _raw(store, pid, "live").pruned
    finally:
        store.dispose()


@pytest.mark.parametrize("bad", ["5x", "90", "d", "-3d", "1.5d", ""])
def test_cli_refuses_a_bad_age(cli, bad):
    _, invoke = cli
    r = invoke("--older-than", bad)
    assert r.exit_code == 2 and "is not an age" in r.output, r.output


def test_cli_refuses_a_database_behind_head(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0008")
    r = CliRunner().invoke(app, ["db", "prune", "--older-than", "90d", "--db", url])
    assert r.exit_code == 1 and "stabmon db upgrade" in r.output


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("pg_schema_url")()


def _run_columns(url: str) -> set[str]:
    eng = make_engine(url, pool_size=1)
    try:
        return {c["name"] for c in inspect(eng).get_columns("runs")}
    finally:
        eng.dispose()


def test_migration_0009_up_and_down_keeps_a_pruned_run(fresh_url):
    migrate.upgrade(fresh_url)
    migrate.check(fresh_url)
    store = Store(fresh_url, pool_size=1)
    try:
        pid = store.ensure_project("alpha")
        _fill(store, pid, "done", "finished")
        coarse = store.series(pid, "done", ["loss"], max_points=4)
        assert store.prune(timedelta(0), now=utcnow() + timedelta(seconds=1)).points > 0
    finally:
        store.dispose()
    migrate.downgrade(fresh_url, "0008")
    assert "points_pruned_at" not in _run_columns(fresh_url)
    migrate.upgrade(fresh_url)
    assert "points_pruned_at" in _run_columns(fresh_url)
    store = Store(fresh_url, pool_size=1)
    try:
        # The stamp went with the column (the run reads empty); the run and its rollups did not,
        # and the next prune stamps it again without deleting anything.
        assert store.get_run(pid, "done").last_step == STEPS - 1
        assert store.series(pid, "done", ["loss"], max_points=4).series["loss"].step == []
        again = store.prune(timedelta(0), now=utcnow() + timedelta(seconds=1))
        assert [(r.run_id, r.points) for r in again.runs] == [("done", 0)]
        assert store.prune(timedelta(0), dry_run=True, now=utcnow() + timedelta(seconds=1)).runs == []
        assert store.series(pid, "done", ["loss"], max_points=4).series == coarse.series  # (no NaN in it)
    finally:
        store.dispose()


def test_vacuum_after_a_prune_on_both_backends(store, runs):
    pid, now, expected = runs
    dry = store.prune(DAY90, dry_run=True, vacuum=True, now=now)
    assert not dry.vacuumed  # a dry run never vacuums
    report = store.prune(DAY90, vacuum=True, now=now)
    assert report.vacuumed and report.points == sum(expected.values())
    if store.dialect == "sqlite":
        assert report.db_bytes_after < report.db_bytes_before
    else:
        assert report.db_bytes_before is None and report.db_bytes_after is None
    assert _raw(store, pid, "old").pruned and not _raw(store, pid, "live").pruned
