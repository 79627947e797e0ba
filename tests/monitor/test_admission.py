"""The ingest gate (:mod:`monitor.api.admission`) and how overload is answered: 503 with
``Retry-After`` and a message saying the collector is overloaded, distinct from the message for
a database that is down. The gate's outcomes here never depend on timing: a waiter either is
handed a slot by a release or, with nothing released, runs out its (short) wait."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import exc as sa_exc

from monitor.api import create_app
from monitor.api.admission import IngestGate, Overloaded
from monitor.settings import Settings
from monitor.store import Store
from tests.monitor.conftest import make_api


def run(coro):  # noqa: ANN001, ANN201
    """``asyncio.run`` on a thread of its own: another test's fixture (Playwright's sync API)
    may hold an event loop running on the main thread, where ``asyncio.run`` is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_slots_then_queue_then_refusal():
    async def scenario() -> None:
        gate = IngestGate(slots=2, queue_bytes=100, wait_s=30)
        await gate.acquire(10)
        await gate.acquire(10)
        assert (gate.running, gate.waiting) == (2, 0)
        first = asyncio.ensure_future(gate.acquire(60))
        await asyncio.sleep(0)
        assert (gate.waiting, gate.queued_bytes) == (1, 60) and not first.done()
        with pytest.raises(Overloaded, match="collector overloaded: 2 batches are being stored and 1"):
            await gate.acquire(41)  # 60 + 41 bytes would pass the queue's 100: refused at once
        second = asyncio.ensure_future(gate.acquire(40))  # 100 fits
        await asyncio.sleep(0)
        assert (gate.waiting, gate.queued_bytes) == (2, 100)
        gate.release()  # handed to the longest waiter, not to the free pool
        await first
        assert (gate.running, gate.waiting, gate.queued_bytes) == (2, 1, 40) and not second.done()
        gate.release()
        await second
        assert (gate.running, gate.waiting, gate.queued_bytes) == (2, 0, 0)
        gate.release()
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_a_body_larger_than_the_queue_may_wait_alone():
    async def scenario() -> None:
        gate = IngestGate(slots=1, queue_bytes=10, wait_s=30)
        await gate.acquire()
        big = asyncio.ensure_future(gate.acquire(1000))  # nobody waiting: it may
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await gate.acquire(1)  # but nothing may join it
        gate.release()
        await big
        gate.release()
        assert (gate.running, gate.waiting, gate.queued_bytes) == (0, 0, 0)

    run(scenario())


def test_a_wait_that_runs_out_is_refused_and_leaves_no_trace():
    async def scenario() -> None:
        gate = IngestGate(slots=1, queue_bytes=1000, wait_s=0.01)
        await gate.acquire()
        with pytest.raises(Overloaded):
            await gate.acquire(100)
        assert (gate.running, gate.waiting, gate.queued_bytes) == (1, 0, 0)
        gate.release()
        await gate.acquire()  # the slot came back to the pool
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_a_cancelled_waiter_does_not_leak_a_slot():
    async def scenario() -> None:
        gate = IngestGate(slots=1, queue_bytes=1000, wait_s=30)
        await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire(100))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (gate.waiting, gate.queued_bytes) == (0, 0)
        gate.release()
        assert gate.running == 0

    run(scenario())


def test_no_wait_means_refuse_at_once():
    async def scenario() -> None:
        gate = IngestGate(slots=1, queue_bytes=1000, wait_s=0)
        await gate.acquire()
        with pytest.raises(Overloaded):
            await gate.acquire()

    run(scenario())


@pytest.mark.parametrize("args", [(0, 1, 1.0), (1, -1, 1.0), (1, 1, -1.0)])
def test_bad_sizes_are_refused(args):
    with pytest.raises(ValueError, match="slots >= 1"):
        IngestGate(*args)


def test_settings_size_the_gate_to_the_pool():
    assert Settings(db="sqlite:///x.db").resolved_ingest_slots == 3
    assert Settings(db="sqlite:///x.db", db_pool_size=2).resolved_ingest_slots == 2
    assert Settings(db="sqlite:///x.db", db_pool_size=2, ingest_slots=5).resolved_ingest_slots == 5


def _full(app) -> None:  # noqa: ANN001
    """Take every slot of the app's gate, so the next ingest is refused."""
    gate = app.state.ingest_gate
    gate.wait_s = 0
    for _ in range(gate.slots):
        run(gate.acquire())


def test_overloaded_ingest_is_503_with_retry_after_and_stores_nothing(store):
    api = make_api(store, settings=Settings(db=store.url, retry_after_s=3))
    api.create_run("r")
    _full(api.client.app)
    r = api.post_points("r", "b1", [{"step": 0, "values": {"loss": 1.0}}])
    assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
    assert r.json()["detail"].startswith("collector overloaded")
    assert "database unavailable" not in r.text
    reg = api.client.app.state.metrics.registry
    assert reg.get_sample_value("stabmon_requests_rejected_total", {"reason": "overloaded"}) == 1
    assert reg.get_sample_value("stabmon_requests_rejected_total", {"reason": "db_unavailable"}) == 0
    # Authentication still comes first; reads are not gated.
    assert api.post_points("r", "b1", [], headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.client.get("/api/v1/runs/r", headers=api.headers).status_code == 200
    gate = api.client.app.state.ingest_gate
    for _ in range(gate.slots):
        gate.release()
    r = api.post_points("r", "b1", [{"step": 0, "values": {"loss": 1.0}}])
    assert r.status_code == 200 and r.json()["accepted"] == 1 and not r.json()["duplicate"]


def test_a_pool_timeout_is_overload_not_an_outage(store):
    api = make_api(store)

    def exhausted() -> None:
        raise sa_exc.TimeoutError("QueuePool limit of size 8 overflow 8 reached, connection timed out")

    api.client.app.add_api_route("/exhausted", exhausted)
    r = api.client.get("/exhausted")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["detail"] == "collector overloaded: every database connection is busy; retry later"


def test_the_database_being_down_keeps_its_own_message():
    dead = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    client = TestClient(create_app(Settings(db=dead), store=Store(dead)))
    r = client.post(
        "/api/v1/runs/r/points", json={"batch_id": "b", "points": []}, headers={"Authorization": "Bearer t"}
    )
    assert r.status_code == 503 and r.json()["detail"] == "database unavailable; retry later"
    client.app.state.store.dispose()
