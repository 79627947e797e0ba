"""Fixtures for the collector tests: every API test runs against SQLite and the real PostgreSQL.

Each test session gets its own SQLite file and its own PostgreSQL schema (in database
``stabmon_test``, selected through ``search_path`` in the URL), both migrated once; tables are
emptied between tests. So the suite runs in parallel with other sessions on the same server.
PostgreSQL cases are skipped locally and failed in CI (tests/_services.py) when no server answers
at 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from monitor.api import create_app
from monitor.settings import Settings
from monitor.store import Store, migrate
from tests._services import require_service

PG_SERVER = os.environ.get("STABMON_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
PG_DB = "stabmon_test"


def _pg_available() -> bool:
    try:
        eng = create_engine(f"{PG_SERVER}/postgres", connect_args={"connect_timeout": 2})
        with eng.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": PG_DB}).first()
        if exists is None:
            with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f"CREATE DATABASE {PG_DB}"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_schema_url() -> Iterator[callable]:
    """A factory of fresh, empty PostgreSQL schemas: returns a URL whose search_path is one."""
    if not _pg_available():
        require_service("PostgreSQL", "not reachable at 127.0.0.1:5432 (scripts/services.sh starts it)")
    admin = create_engine(f"{PG_SERVER}/{PG_DB}")
    made: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {name}"))
        made.append(name)
        return f"{PG_SERVER}/{PG_DB}?options=-csearch_path%3D{name}"

    yield make
    with admin.begin() as conn:
        for name in made:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {name} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'stabmon.db'}"
    return request.getfixturevalue("pg_schema_url")()


@pytest.fixture(scope="session")
def session_store(backend_url) -> Iterator[Store]:
    migrate.upgrade(backend_url)
    store = Store(backend_url, pool_size=4)
    yield store
    store.dispose()


@pytest.fixture
def store(session_store) -> Store:
    session_store.truncate()
    return session_store


@dataclass
class Api:
    """A collector app on the test database with two projects' tokens."""

    client: TestClient
    store: Store
    token: str
    other_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def other_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.other_token}"}

    def create_run(self, run_id: str = "run1", **config) -> dict:
        r = self.client.post(
            "/api/v1/runs", json={"id": run_id, "name": run_id, "config": config}, headers=self.headers
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def post_points(self, run_id: str, batch_id: str, points: list[dict], headers=None):  # noqa: ANN001, ANN201
        return self.client.post(
            f"/api/v1/runs/{run_id}/points",
            json={"batch_id": batch_id, "points": points},
            headers=headers or self.headers,
        )


@pytest.fixture(autouse=True)
def _stop_alert_threads(monkeypatch) -> Iterator[None]:
    """Stop the webhook dispatcher of every app a test builds. Tests' TestClients are rarely
    entered as context managers, so the lifespan that stops it never runs, and a dispatcher
    left running keeps writing its outbox: the next test's TRUNCATE can then deadlock with it
    on PostgreSQL. Every app builds its notifier with ``build_notifier``, so that is where they
    are seen."""
    from monitor.api import app as app_module

    notifiers = []
    build = app_module.build_notifier

    def recording(*args, **kwargs):  # noqa: ANN202
        notifiers.append(build(*args, **kwargs))
        return notifiers[-1]

    monkeypatch.setattr(app_module, "build_notifier", recording)
    yield
    for notifier in notifiers:
        notifier.stop(timeout=0.5)


def make_api(store: Store, **kwargs) -> Api:
    settings = kwargs.pop("settings", None) or Settings(db=store.url)
    app = create_app(settings, store=store, **kwargs)
    token, _ = store.create_token("alpha")
    other, _ = store.create_token("beta")
    return Api(TestClient(app), store, token, other)


@pytest.fixture
def api(store) -> Api:
    return make_api(store)
