"""Load shedding on a real collector and a real PostgreSQL with a small pool: more concurrent
batches than the collector admits are answered 503 with ``Retry-After`` and an "overloaded"
message, never anything else, and every batch acknowledged with 2xx is stored exactly once.

The overload is made, not hoped for: another session holds a lock on every run row, so the
batches that get an ingest slot block inside it; with 2 slots and room for one waiting batch,
the other 22 of 24 concurrent batches must be refused (at once, or after their wait). Then the lock goes
and all 24 runs send their batches concurrently, retrying refusals, re-sending some acknowledged
batches (answered ``duplicate``); the stored rows are counted per run at the end."""

from __future__ import annotations

import random
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from monitor.store import Store, migrate
from tests._collector import Collector, wait_until
from tests._services import require_service

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
RUNS, BATCHES, STEPS, KEYS = 24, 5, 20, 50
GATE = {
    "STABMON_DB_POOL_SIZE": "2",
    "STABMON_INGEST_SLOTS": "2",
    "STABMON_INGEST_QUEUE_BYTES": "1",  # one waiting batch at a time
    "STABMON_INGEST_WAIT_S": "0.3",
    "STABMON_RETRY_AFTER_S": "1",
}


def _body(run: int, batch: int) -> dict:
    steps = range(batch * STEPS, (batch + 1) * STEPS)
    return {
        "batch_id": f"b{batch}",
        "points": [
            {"step": s, "values": {f"layer.{k}.fc1.l2_mean": run + s + k / 100 for k in range(KEYS)}}
            for s in steps
        ],
    }


@pytest.fixture
def pg_url():
    admin = create_engine(f"{PG_SERVER}/stabmon_test", connect_args={"connect_timeout": 3})
    schema = f"shed_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception:  # noqa: BLE001
        admin.dispose()
        require_service("PostgreSQL", "not reachable at 127.0.0.1:5432 (scripts/services.sh starts it)")
    url = f"{PG_SERVER}/stabmon_test?options=-csearch_path%3D{schema}"
    migrate.upgrade(url)
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


def _check_refusal(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers.get("retry-after") == "1", r.headers
    assert r.json()["detail"].startswith("collector overloaded"), r.text


def test_overload_is_503_with_retry_after_and_acknowledged_batches_are_stored_once(pg_url, tmp_path):
    store = Store(pg_url, pool_size=1)
    token, _ = store.create_token("shed")
    store.dispose()
    col = Collector(pg_url, workdir=tmp_path, env=GATE).start()
    h = {"Authorization": f"Bearer {token}"}
    http = httpx.Client(base_url=col.url, headers=h, timeout=120)
    locker = create_engine(pg_url).connect()
    try:
        for i in range(RUNS):
            http.post("/api/v1/runs", json={"id": f"r{i}", "name": f"r{i}"}).raise_for_status()

        # 1. Every run row locked by another session: admitted batches block, the rest are shed.
        tx = locker.begin()
        locker.execute(text("SELECT id FROM runs FOR UPDATE"))
        first: dict[int, httpx.Response] = {}

        def post_first(i: int) -> None:
            with httpx.Client(base_url=col.url, headers=h, timeout=120) as c:
                first[i] = c.post(f"/api/v1/runs/r{i}/points", json=_body(i, 0))

        threads = [threading.Thread(target=post_first, args=(i,)) for i in range(RUNS)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(first) >= RUNS - 2, timeout=60), len(first)
        time.sleep(0.5)  # (a third answer arriving now would be a failure, caught below)
        assert len(first) == RUNS - 2, {i: r.status_code for i, r in first.items()}
        for r in first.values():
            _check_refusal(r)
        tx.rollback()
        for t in threads:
            t.join(60)
        admitted = [i for i, r in first.items() if r.status_code == 200]
        assert len(admitted) == 2 and all(first[i].json()["accepted"] == STEPS * KEYS for i in admitted)

        # 2. All runs at once, refusals retried, some acknowledged batches sent again.
        statuses: list[int] = []
        errors: list[str] = []

        def send(i: int) -> None:
            rng = random.Random(i)
            with httpx.Client(base_url=col.url, headers=h, timeout=120) as c:
                for b in range(BATCHES):
                    if b == 0 and i in admitted:
                        continue
                    resend = rng.random() < 0.3
                    while True:
                        r = c.post(f"/api/v1/runs/r{i}/points", json=_body(i, b))
                        statuses.append(r.status_code)
                        if r.status_code == 200:
                            if not resend:
                                break
                            resend = False  # once more: must be a duplicate, stored once
                            continue
                        try:
                            _check_refusal(r)
                        except AssertionError as e:
                            errors.append(str(e))
                            return
                        time.sleep(rng.uniform(0.05, 0.2))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(RUNS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not errors, errors[:3]
        assert set(statuses) <= {200, 503}
    finally:
        locker.close()
        http.close()
        col.stop()

    eng = create_engine(pg_url)
    try:
        with eng.connect() as conn:
            stored = dict(
                conn.execute(
                    text(
                        "SELECT r.name, count(*) FROM points p JOIN series s ON s.id = p.series_id "
                        "JOIN runs r ON r.id = s.run_id GROUP BY r.name"
                    )
                ).all()
            )
            batches = dict(
                conn.execute(
                    text(
                        "SELECT r.name, count(*) FROM ingest_batches b JOIN runs r ON r.id = b.run_id "
                        "GROUP BY r.name"
                    )
                ).all()
            )
    finally:
        eng.dispose()
    assert stored == {f"r{i}": BATCHES * STEPS * KEYS for i in range(RUNS)}
    assert batches == {f"r{i}": BATCHES for i in range(RUNS)}
