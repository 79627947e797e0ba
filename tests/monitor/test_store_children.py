"""``points``, ``rollups`` and ``latest`` have no foreign key to ``series`` (migration 0006): a
trigger on ``series`` removes their rows instead. Deleting a run (which cascades to its series)
or a single series must leave no orphan, on both backends, and must not touch other runs; the
migration must keep the data across a downgrade and upgrade."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from monitor.store import Store, migrate
from monitor.store.engine import make_engine
from stabmon.wire import Point, RunCreate

CHILDREN = ("points", "rollups", "latest")
# Runs are named after their API id here, so SQL can find a run's rows by name, whatever key
# the tables use internally.
_OF_RUN = "run_id IN (SELECT id FROM runs WHERE name = :r)"


def _fill(store: Store, pid: int, run_id: str, steps: int = 40) -> None:
    store.create_run(pid, RunCreate(id=run_id, name=run_id))
    values = [{"loss": 3.0 - s / 100, "layer.0.fc1.l2_mean": 1.0 + s} for s in range(steps)]
    pts = [Point(step=s, values=v) for s, v in enumerate(values)]
    store.write_points(pid, run_id, "append", pts)  # appended: COPY / plain insert
    store.write_points(pid, run_id, "rewrite", pts[:5])  # rewrites the past: upsert


def _counts(store: Store, run_id: str) -> dict[str, int]:
    with store.engine.connect() as conn:
        out = {
            t: conn.execute(
                text(f"SELECT count(*) FROM {t} WHERE series_id IN (SELECT id FROM series WHERE {_OF_RUN})"),
                {"r": run_id},
            ).scalar_one()
            for t in CHILDREN
        }
        out["orphans"] = sum(
            conn.execute(
                text(f"SELECT count(*) FROM {t} WHERE series_id NOT IN (SELECT id FROM series)")
            ).scalar_one()
            for t in CHILDREN
        )
    return out


def test_deleting_a_run_removes_its_points_rollups_and_latest(store):
    pid = store.ensure_project("p")
    _fill(store, pid, "gone")
    _fill(store, pid, "kept")
    assert _counts(store, "gone") == {"points": 80, "rollups": 6, "latest": 2, "orphans": 0}
    with store.engine.begin() as conn:
        gone = conn.execute(text("SELECT id FROM runs WHERE name = 'gone'")).scalar_one()
        conn.execute(text("DELETE FROM runs WHERE name = 'gone'"))
    with store.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM series WHERE run_id = :g"), {"g": gone}).scalar_one()
    assert left == 0
    assert _counts(store, "kept") == {"points": 80, "rollups": 6, "latest": 2, "orphans": 0}
    assert store.series(pid, "kept", ["loss"], max_points=100).series["loss"].count == [1] * 40


def test_deleting_one_series_removes_only_its_rows(store):
    pid = store.ensure_project("p")
    _fill(store, pid, "r")
    with store.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM series WHERE {_OF_RUN} AND key = 'loss'"), {"r": "r"})
    assert _counts(store, "r") == {"points": 40, "rollups": 3, "latest": 1, "orphans": 0}
    assert store.latest(pid, "r").keys() == {"layer.0.fc1.l2_mean"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("pg_schema_url")()


def _child_fks(url: str) -> dict[str, list]:
    eng = make_engine(url, pool_size=1)
    try:
        return {t: inspect(eng).get_foreign_keys(t) for t in CHILDREN}
    finally:
        eng.dispose()


def test_migration_0006_down_and_up_keeps_the_data(fresh_url):
    migrate.upgrade(fresh_url)
    store = Store(fresh_url)
    try:
        pid = store.ensure_project("p")
        _fill(store, pid, "r")
        before = store.series(pid, "r", ["loss"], max_points=10).series["loss"]
        migrate.downgrade(fresh_url, "0004")
        fks = _child_fks(fresh_url)
        assert all(f and f[0]["referred_table"] == "series" for f in fks.values()), fks
        migrate.upgrade(fresh_url)
        migrate.check(fresh_url)
        assert not any(_child_fks(fresh_url).values())
        if fresh_url.startswith("sqlite"):  # the rebuilt tables are still clustered by primary key
            with store.engine.connect() as conn:
                ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'points'")).scalar()
            assert "WITHOUT ROWID" in ddl
        assert store.series(pid, "r", ["loss"], max_points=10).series["loss"] == before
        assert _counts(store, "r") == {"points": 80, "rollups": 6, "latest": 2, "orphans": 0}
    finally:
        store.dispose()
