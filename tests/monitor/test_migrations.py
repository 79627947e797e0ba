"""Alembic migrations up and down on SQLite and PostgreSQL, ``alembic check`` (models and
migrations agree), and the start-up policy (migrate, or refuse with the command to run)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from monitor.api import SchemaNotReady, create_app
from monitor.settings import Settings
from monitor.store import migrate
from monitor.store.engine import make_engine
from monitor.store.models import metadata
from tests.monitor._old_schema import reflected

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("pg_schema_url")()


def _tables(url: str) -> set[str]:
    eng = make_engine(url, pool_size=1)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def test_upgrade_check_downgrade_upgrade(fresh_url):
    migrate.upgrade(fresh_url)
    # (other packages may add tables to the metadata and migrations of their own)
    assert set(metadata.tables) <= _tables(fresh_url)
    assert migrate.is_at_head(fresh_url)
    migrate.check(fresh_url)  # raises if models and migrations drifted apart
    migrate.downgrade(fresh_url, "base")
    assert _tables(fresh_url) == set()
    assert migrate.current_revision(fresh_url) is None
    migrate.upgrade(fresh_url)
    assert migrate.is_at_head(fresh_url)


@pytest.mark.integration
def test_alembic_cli_from_the_repo_root(fresh_url):
    env = {**os.environ, "STABMON_DB": fresh_url}
    for args in (["upgrade", "head"], ["check"]):
        p = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr


def test_server_refuses_a_schema_behind_head_unless_migrating(fresh_url):
    with pytest.raises(SchemaNotReady, match="stabmon db upgrade"):
        create_app(Settings(db=fresh_url, migrate_on_start=False))
    app = create_app(Settings(db=fresh_url, migrate_on_start=True))
    assert migrate.is_at_head(fresh_url)
    app.state.store.dispose()


def test_default_start_up_policy_per_backend():
    assert Settings(db="sqlite:///x.db").should_migrate_on_start
    assert not Settings(db="postgresql+psycopg://u@h/d").should_migrate_on_start
    with pytest.raises(ValueError, match="STABMON_DB"):
        Settings(db="mysql://u@h/d")


def test_rollups_migration_summarises_existing_points(fresh_url):
    from monitor.store import Store
    from stabmon.wire import Point, RunCreate

    migrate.upgrade(fresh_url)
    store = Store(fresh_url)
    try:
        pid = store.ensure_project("p")
        store.create_run(pid, RunCreate(id="r", name="r"))
        vals = [float(s % 7) for s in range(200)]
        vals[33] = 1e9
        store.write_points(pid, "r", "b", [Point(step=s, values={"x": v}) for s, v in enumerate(vals)])
        before = store.series(pid, "r", ["x"], max_points=5).series["x"]
        migrate.downgrade(fresh_url, "0002")
        migrate.upgrade(fresh_url)
        after = store.series(pid, "r", ["x"], max_points=5).series["x"]
        assert after == before and 1e9 in after.max and sum(after.count) == 200
    finally:
        store.dispose()


def _populate_0004(url: str) -> None:
    """One run with a row in every child table, written in the 0004 schema (reflected)."""
    now = datetime.now(timezone.utc)
    with reflected(url) as (conn, t):
        conn.execute(
            t["projects"].insert(),
            [{"id": 1, "name": "alpha", "created_at": now}, {"id": 2, "name": "beta", "created_at": now}],
        )
        conn.execute(t["runs"].insert(), {
            "id": "old-run", "project_id": 1, "name": "old", "status": "running", "variant": None,
            "config": {"lr": 0.1}, "summary": {}, "last_step": 2, "created_at": now, "updated_at": now,
        })  # fmt: skip
        sid = conn.execute(
            t["series"].insert().returning(t["series"].c.id),
            {"run_id": "old-run", "key": "loss", "layer": None, "site": None, "stat": "loss"},
        ).scalar_one()
        conn.execute(
            t["points"].insert(),
            [{"series_id": sid, "rank": 0, "step": s, "value": 3.0 - s} for s in range(3)],
        )
        conn.execute(t["latest"].insert(), {"series_id": sid, "rank": 0, "step": 2, "value": 1.0})
        conn.execute(
            t["ingest_batches"].insert(),
            {"run_id": "old-run", "batch_id": "b0", "n_points": 3, "received_at": now},
        )
        aid = conn.execute(t["alerts"].insert().returning(t["alerts"].c.id), {
            "run_id": "old-run", "rule": "non_finite", "severity": "critical", "status": "open",
            "step": 2, "last_step": 2, "message": "m", "evidence": {}, "created_at": now,
            "updated_at": now,
        }).scalar_one()  # fmt: skip
        conn.execute(
            t["run_state"].insert(),
            {"run_id": "old-run", "detector_state": "{}", "last_step": 2, "updated_at": now},
        )
        conn.execute(t["alert_deliveries"].insert(), {
            "alert_id": aid, "run_id": "old-run", "event": "opened", "target_id": "t", "url": "http://x",
            "format": "json", "attempt": 1, "outcome": "delivered", "status_code": 200, "error": None,
            "duration_ms": 1.0, "created_at": now,
        })  # fmt: skip


def _run_ids_by_child(url: str) -> dict[str, set[str]]:
    eng = make_engine(url, pool_size=1)
    try:
        with eng.connect() as conn:
            return {
                t: set(conn.execute(text(f"SELECT run_id FROM {t}")).scalars())
                for t in ("series", "ingest_batches", "alerts", "run_state", "alert_deliveries")
            }
    finally:
        eng.dispose()


def test_run_ids_migration_on_a_populated_database(fresh_url):
    """0005 keeps every row of an existing run under its id and makes ids per project; the
    downgrade refuses while two projects share an id, and otherwise puts the runs registered
    since 0005 back under their own id with all their rows."""
    from monitor.alerts.log import DeliveryAttempt
    from monitor.ingest import IngestService
    from monitor.store import Store
    from stabmon.wire import Point, PointsIn, RunCreate

    migrate.upgrade(fresh_url, "0004")
    _populate_0004(fresh_url)
    migrate.upgrade(fresh_url)
    migrate.check(fresh_url)
    store = Store(fresh_url)
    try:
        run = store.get_run(1, "old-run")
        assert (run.name, run.last_step, run.open_alerts, run.config) == ("old", 2, 1, {"lr": 0.1})
        assert store.series(1, "old-run", ["loss"]).series["loss"].last == [3.0, 2.0, 1.0]
        assert store.latest(1, "old-run") == {"loss": (2, 1.0)}
        assert [a.run_id for a in store.list_alerts(1, "old-run")] == ["old-run"]
        assert [d.run_id for d in store.deliveries.list(1, "old-run")] == ["old-run"]
        assert store.write_points(1, "old-run", "b0", [Point(step=3, values={"loss": 0.5})]).duplicate
        # Another project takes the same id; a run registered now gets a generated internal key.
        _, created = store.create_run(2, RunCreate(id="old-run", name="beta's"))
        assert created and store.get_run(1, "old-run").name == "old"
        store.create_run(1, RunCreate(id="new-run", name="new"))
        batch = PointsIn(
            batch_id="n0", points=[Point(step=0, values={"loss": 9.0}), Point(step=1, values={"loss": "nan"})]
        )
        (alert,) = IngestService(store).ingest(1, "new-run", batch).alerts  # rows in every child table
        store.deliveries.record(
            DeliveryAttempt(alert.id, "new-run", "opened", "t", "http://x", "json", 1, "delivered", 200)
        )
        assert [d.run_id for d in store.deliveries.list(1, "new-run")] == ["new-run"]
        assert store.series(2, "old-run", ["loss"]).series["loss"].last == []

        with pytest.raises(RuntimeError, match="used by more than one project.*'old-run'"):
            migrate.downgrade(fresh_url, "0004")
        # Refused before 0005's downgrade touched anything (PostgreSQL rolls back the whole
        # downgrade; SQLite's DDL is not transactional in Alembic, so later revisions may have
        # gone down): upgrading again finds every run as it was.
        assert migrate.current_revision(fresh_url) in ("0005", migrate.head_revision())
        migrate.upgrade(fresh_url)
        assert store.get_run(2, "old-run").name == "beta's" and store.get_run(1, "old-run").last_step == 2
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM runs WHERE project_id = 2"))
        store.dispose()
        migrate.downgrade(fresh_url, "0004")
        eng = make_engine(fresh_url, pool_size=1)
        try:
            with eng.connect() as conn:
                assert set(conn.execute(text("SELECT id FROM runs")).scalars()) == {"old-run", "new-run"}
                new_points = (
                    "SELECT p.value FROM points p JOIN series s ON s.id = p.series_id WHERE s.run_id = :r"
                )
                assert (
                    conn.execute(text(new_points + " ORDER BY p.step"), {"r": "new-run"}).scalars().first()
                    == 9.0
                )
        finally:
            eng.dispose()
        assert all(ids == {"old-run", "new-run"} for ids in _run_ids_by_child(fresh_url).values())
        migrate.upgrade(fresh_url)
        step, value = store.latest(1, "new-run")["loss"]
        assert step == 1 and math.isnan(value)
        assert [a.run_id for a in store.list_alerts(1, "new-run")] == ["new-run"]
        assert store.latest(1, "old-run") == {"loss": (2, 1.0)}
    finally:
        store.dispose()
