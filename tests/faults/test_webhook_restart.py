"""Webhook retries pending when the collector goes down are delivered after it comes back.

A real ``stabmon serve`` process opens an alert from a real ingest request; the run's webhook
is a real HTTP receiver that answers 500, so the delivery backs off and retries. The collector
is then stopped (SIGTERM: a clean shutdown) or killed (SIGKILL: nothing runs on the way out),
the receiver starts answering 200, and the collector is started again on the same database.
With no further ingest (nothing new to notify), the restarted collector delivers the event:
its attempt numbers continue where the first process stopped, the resumed attempt comes no
earlier than the backoff the first process scheduled, and the receiver hears the event once
successfully. The backoff's growth itself is checked in the dispatcher's tests, without a clock.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests._collector import Collector, wait_until
from tests.monitor._alerts_receiver import Receiver

pytestmark = pytest.mark.integration

BACKOFF_S = 0.5
ENV = {
    "STABMON_WEBHOOK_BACKOFF_S": str(BACKOFF_S),
    "STABMON_WEBHOOK_MAX_ATTEMPTS": "30",  # never exhausted before the restart
    "STABMON_WEBHOOK_TIMEOUT_S": "5",
}


def _logged(db: Path) -> list[tuple]:
    """The delivery log as the stopped collector left it on disk."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT attempt, outcome, status_code FROM alert_deliveries ORDER BY id"
        ).fetchall()


def _deliveries(col: Collector, h: dict) -> list[dict]:
    r = httpx.get(f"{col.url}/api/v1/runs/r/deliveries", headers=h, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("down", ["stop", "kill"])
def test_a_webhook_retry_pending_at_shutdown_is_delivered_after_restart(tmp_path, down):
    col = Collector(f"sqlite:///{tmp_path / 'w.db'}", workdir=tmp_path, env=ENV)
    with Receiver(statuses=[500]) as rx:
        col.start()
        try:
            h = {"Authorization": f"Bearer {(tmp_path / 'w.db.token').read_text().strip()}"}
            run = {"id": "r", "name": "r", "config": {"webhooks": [rx.url + "/hook"]}}
            assert httpx.post(f"{col.url}/api/v1/runs", json=run, headers=h, timeout=30).status_code == 201
            pts = [{"step": i, "values": {"loss": "nan" if i == 9 else 2.0}} for i in range(10)]
            r = httpx.post(
                f"{col.url}/api/v1/runs/r/points",
                json={"batch_id": "b0", "points": pts},
                headers=h,
                timeout=30,
            )
            assert r.status_code == 200 and r.json()["alerts"], r.text
            # The receiver answering is not enough: the attempt must be in the delivery log
            # before the collector goes down (a kill right after the POST would lose it).
            assert wait_until(lambda: len(rx.requests) >= 1 and _deliveries(col, h), timeout=30)
            col.stop() if down == "stop" else col.kill()
            before = _logged(tmp_path / "w.db")
            assert before == [(i + 1, "retrying", 500) for i in range(len(before))] and before
            failed_posts = len(rx.requests)  # nothing posts to it now

            rx.statuses = [200]  # the receiver is healthy again
            col.start()

            def delivered() -> bool:
                return any(d["outcome"] == "delivered" for d in _deliveries(col, h))

            assert wait_until(delivered, timeout=60), _deliveries(col, h)
            rows = _deliveries(col, h)
        finally:
            col.stop()
    assert [(d["attempt"], d["outcome"]) for d in rows] == [
        *[(i + 1, "retrying") for i in range(len(before))],
        (len(before) + 1, "delivered"),
    ]
    assert len({(d["alert_id"], d["event"]) for d in rows}) == 1 and rows[0]["event"] == "opened"
    # Not sooner than the backoff scheduled after the last failed attempt (jitter only adds).
    last_failed = datetime.fromisoformat(rows[-2]["created_at"])
    resumed = datetime.fromisoformat(rows[-1]["created_at"])
    assert resumed - last_failed >= timedelta(seconds=BACKOFF_S * 2 ** (len(before) - 1))
    bodies = [q["json"] for q in rx.requests]
    assert len(bodies) == failed_posts + 1 and bodies[-1] == bodies[0]  # the same payload, once more
    if down == "stop":
        assert "kept in the outbox for the next start" in col.log_text()
    assert bodies[-1]["event"] == "opened" and bodies[-1]["alert"]["rule"] == "non_finite"
