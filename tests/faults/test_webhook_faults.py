"""Webhook receivers that hang or fail, seen from the ingest path of a whole collector app.

The dispatcher's own tests (``tests/monitor/test_alerts_dispatcher.py``) cover retries with
backoff, final 4xx, a hanging receiver not holding up the others and a full queue. What they
cannot show is the collector around it: here alerts are opened by real ingest requests of a
run whose ``config.webhooks`` point at a receiver that never answers and one that answers
500 twice. Every ingest request is answered while the stuck receiver still holds its first
delivery (so delivery is off the ingest path: a synchronous notifier would block the first
request forever), and the failing receiver's retries are visible in the delivery log API
with attempt numbers, outcomes and status codes (the growth of the backoff itself is
checked in the dispatcher's tests, without a clock).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.settings import Settings
from monitor.store import Store, migrate
from tests._collector import wait_until
from tests.monitor._alerts_receiver import Receiver


class FailTwice:
    """Answers 500 to the first two attempts of every (alert, event), then 200."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                key = (body["alert"]["id"], body["event"])
                outer.seen[key] += 1
                status = 500 if outer.seen[key] <= 2 else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_hanging_and_failing_webhooks_leave_ingest_alone_and_are_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("STABMON_WEBHOOK_BACKOFF_S", "0.2")
    monkeypatch.setenv("STABMON_WEBHOOK_TIMEOUT_S", "30")
    monkeypatch.setenv("STABMON_WEBHOOK_MAX_ATTEMPTS", "4")
    db = f"sqlite:///{tmp_path / 'w.db'}"
    migrate.upgrade(db)
    store = Store(db)
    app = create_app(Settings(db=db), store=store)
    token, _ = store.create_token("hooks")
    h = {"Authorization": f"Bearer {token}"}
    failing = FailTwice()
    with Receiver(hang=60) as stuck, TestClient(app) as client:
        cfg = {"webhooks": [stuck.url + "/stuck", failing.url + "/flaky"]}
        assert (
            client.post("/api/v1/runs", json={"id": "r", "name": "r", "config": cfg}, headers=h).status_code
            == 201
        )
        answers = []
        for b in range(12):
            # A NaN loss in every other batch: alerts open, resolve and reopen -> many events.
            pts = [
                {"step": b * 10 + i, "values": {"loss": "nan" if (b % 2 == 0 and i == 9) else 2.0}}
                for i in range(10)
            ]
            r = client.post("/api/v1/runs/r/points", json={"batch_id": f"b{b}", "points": pts}, headers=h)
            answers.append(r.status_code)
            if b == 0:
                assert r.json()["alerts"], r.text  # the first alert opened with this batch
                assert wait_until(lambda: len(stuck.requests) >= 1, timeout=30)
        assert answers == [200] * 12
        assert len(stuck.requests) >= 1 and not stuck._released.is_set()  # still hanging
        log = client.get("/api/v1/runs/r/deliveries", headers=h)

        def flaky_done() -> bool:
            rows = client.get("/api/v1/runs/r/deliveries", headers=h).json()
            return any(d["url"].endswith("/flaky") and d["outcome"] == "delivered" for d in rows)

        assert wait_until(flaky_done, timeout=60), log.text
        rows = [
            d
            for d in client.get("/api/v1/runs/r/deliveries", headers=h).json()
            if d["url"].endswith("/flaky")
        ]
        groups: dict[tuple, list[dict]] = {}
        for d in rows:
            groups.setdefault((d["alert_id"], d["event"]), []).append(d)
        done = [g for g in groups.values() if g[-1]["outcome"] == "delivered"]
        assert done
        for g in done:
            assert [(d["attempt"], d["outcome"], d["status_code"]) for d in g] == [
                (1, "retrying", 500),
                (2, "retrying", 500),
                (3, "delivered", 200),
            ]
            t = [datetime.fromisoformat(d["created_at"]) for d in g]
            assert t == sorted(t)
        stuck._released.set()
    failing.close()
    store.dispose()
