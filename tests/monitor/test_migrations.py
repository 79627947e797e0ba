"""Alembic migrations up and down on SQLite and PostgreSQL, ``alembic check`` (models and
migrations agree), and the start-up policy (migrate, or refuse with the command to run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from monitor.api import SchemaNotReady, create_app
from monitor.settings import Settings
from monitor.store import migrate
from monitor.store.engine import make_engine
from monitor.store.models import metadata

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
