"""The database goes away under a running collector: PostgreSQL refuses connections (its own
dedicated database is closed to connections and its sessions terminated; the shared server
keeps running for every other test), or SQLite's write lock is held by another process
(``BEGIN EXCLUSIVE``). Ingest answers 503 with ``Retry-After``, ``/readyz`` reports it, the
client backs off and retries, and once the database is back every written point is stored
exactly once."""

from __future__ import annotations

import sqlite3
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from monitor.store import Store, migrate
from tests._collector import Collector, read_all_series, wait_until
from tests._services import require_service
from trainer_hooks.client import Client, RunInfo

pytestmark = pytest.mark.integration

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
KEYS = ["loss", "layer.0.fc2.l2_mean", "layer.1.attn.logit_max"]


def _record(step: int) -> dict:
    return {"step": step, "rank": 0, "values": {k: step + i / 10 for i, k in enumerate(KEYS)}}


def _client(col: Collector, token: str, run_id: str, tmp_path) -> Client:
    return Client(
        col.url,
        token=token,
        run=RunInfo(name=run_id, id=run_id),
        spool_dir=tmp_path / "spool",
        max_batch_points=10,
        flush_interval_s=0.05,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )


def _ingest_status(col: Collector, token: str, run_id: str) -> httpx.Response:
    return httpx.post(
        f"{col.url}/api/v1/runs/{run_id}/points",
        json={"batch_id": f"probe-{uuid.uuid4().hex}", "points": [{"step": 10**6, "values": {"x": 1.0}}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def _check_outage_and_recovery(col, token, tmp_path, cut, restore) -> None:
    c = _client(col, token, "outage", tmp_path)
    try:
        for s in range(50):
            c.write(_record(s))
        assert c.flush(60), c.stats
        cut()
        ready = httpx.get(f"{col.url}/readyz", timeout=60)
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1", ready.text
        r = _ingest_status(col, token, "outage")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert "database unavailable" in r.json()["detail"]
        for s in range(50, 150):
            c.write(_record(s))
        assert wait_until(lambda: c.stats.retries >= 2, timeout=60), c.stats
        assert "503" in (c.stats.last_error or ""), c.stats.last_error
        assert c.stats.points_acked == 50  # nothing acknowledged while the database is away
        restore()
        assert wait_until(lambda: httpx.get(f"{col.url}/readyz", timeout=60).status_code == 200, 60)
        assert c.flush(90), c.stats
    finally:
        c.close()
    st = c.stats
    assert st.points_acked == st.records_written == 150
    assert st.rejected_points == st.thinned_points == st.points_lost == st.records_dropped == 0
    got = read_all_series(col.url, token, "outage", KEYS)
    for i, key in enumerate(KEYS):
        assert got[key]["step"] == list(range(150)), key
        assert set(got[key]["count"]) == {1}, key  # retried batches stored once
        assert [float(v) for v in got[key]["last"]] == [s + i / 10 for s in range(150)]


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_refusing_connections_is_503_then_recovers(tmp_path):
    name = f"stabmon_fault_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(
            f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as e:  # noqa: BLE001
        require_service("PostgreSQL", f"not reachable at 127.0.0.1:5432: {e}")
    db = f"{PG_SERVER}/{name}"

    def terminate() -> None:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
            )

    def cut() -> None:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        terminate()

    def restore() -> None:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))

    col = None
    try:
        migrate.upgrade(db)
        store = Store(db, pool_size=1)
        token, _ = store.create_token("faults")
        store.dispose()
        col = Collector(db, workdir=tmp_path, env={"STABMON_RETRY_AFTER_S": "1"}).start()
        _check_outage_and_recovery(col, token, tmp_path, cut, restore)
    finally:
        if col is not None:
            col.stop()
        restore()
        terminate()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.mark.slow
def test_sqlite_locked_by_another_writer_is_503_then_recovers(tmp_path):
    db_file = tmp_path / "stabmon.db"
    env = {"STABMON_RETRY_AFTER_S": "1", "STABMON_SQLITE_BUSY_TIMEOUT_S": "1"}
    col = Collector(f"sqlite:///{db_file}", workdir=tmp_path, env=env).start()
    token = (tmp_path / "stabmon.db.token").read_text().strip()
    locker = sqlite3.connect(db_file, isolation_level=None, timeout=30)

    def cut() -> None:
        locker.execute("BEGIN EXCLUSIVE")  # a backup job or a second writer holding the lock

    def restore() -> None:
        locker.execute("ROLLBACK")

    try:
        _check_outage_and_recovery(col, token, tmp_path, cut, restore)
    finally:
        if locker.in_transaction:
            locker.execute("ROLLBACK")
        locker.close()
        col.stop()
    assert "Traceback" not in col.log_text()
