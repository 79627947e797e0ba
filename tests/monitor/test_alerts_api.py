"""Webhooks through the real collector: ingest opens an alert, the dispatcher delivers it to
real receivers, the delivery log is in SQL and readable over the API (SQLite and PostgreSQL),
and a hanging webhook does not slow ingest down."""

from __future__ import annotations

import statistics
import time

import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.settings import Settings
from tests.monitor._alerts_receiver import Receiver


def make_client(store, monkeypatch, webhook_urls: str | None, **env) -> tuple[TestClient, str, str]:
    if webhook_urls is None:
        monkeypatch.delenv("STABMON_WEBHOOK_URLS", raising=False)
    else:
        monkeypatch.setenv("STABMON_WEBHOOK_URLS", webhook_urls)
    monkeypatch.setenv("STABMON_WEBHOOK_BACKOFF_S", "0.05")
    for k, v in env.items():
        monkeypatch.setenv(f"STABMON_{k.upper()}", str(v))
    app = create_app(Settings(db=store.url), store=store)
    token, _ = store.create_token("alpha")
    other, _ = store.create_token("beta")
    return TestClient(app, headers={"Authorization": f"Bearer {token}"}), token, other


def post(client: TestClient, run_id: str, batch: str, steps: dict[int, float | str]):
    points = [{"step": s, "values": {"loss": v}} for s, v in steps.items()]
    r = client.post(f"/api/v1/runs/{run_id}/points", json={"batch_id": batch, "points": points})
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.02)
    return fn()


def test_alert_reaches_json_and_slack_webhooks_and_the_delivery_log(store, monkeypatch):
    with Receiver(statuses=[500, 200]) as flaky, Receiver() as slack, Receiver() as own:
        urls = f'["{flaky.url}/hook", {{"url": "{slack.url}/services/T/B/s3cret", "format": "slack"}}]'
        client, _, other = make_client(store, monkeypatch, urls)
        r = client.post("/api/v1/runs", json={"id": "r1", "name": "baseline", "config": {
            "variant": "baseline", "lr": 0.03, "webhooks": [own.url]}})  # fmt: skip
        assert r.status_code == 201, r.text
        post(client, "r1", "b1", {s: 3.0 - 0.01 * s for s in range(10)})
        answer = post(client, "r1", "b2", {10: "nan"})
        (alert,) = answer["alerts"]
        assert alert["rule"] == "non_finite" and alert["severity"] == "critical"

        body = flaky.wait_for(2)[-1]["json"]  # 500 first, then the retry gets through
        msg = slack.wait_for(1)[0]["json"]
        mine = own.wait_for(1)[0]["json"]
        assert body["event"] == "opened" and body["alert"]["id"] == alert["id"]
        assert body["run"]["variant"] == "baseline" and body["alert"]["step"] == 10
        assert msg["text"].startswith(":rotating_light: [CRITICAL] non_finite opened") and msg["blocks"]
        assert mine["alert"]["rule"] == "non_finite"

        url = f"/api/v1/runs/r1/alerts/{alert['id']}/deliveries"

        def all_delivered():
            attempts = client.get(url).json()
            return attempts if sum(d["outcome"] == "delivered" for d in attempts) == 3 else None

        log = wait_until(all_delivered)
        assert log, client.get(url).json()
        by_target: dict[str, list] = {}
        for d in log:
            by_target.setdefault(d["url"], []).append((d["attempt"], d["status_code"], d["outcome"]))
        port = flaky.server.server_address[1]
        assert by_target[f"http://127.0.0.1:{port}/hook"] == [(1, 500, "retrying"), (2, 200, "delivered")]
        slack_url = f"http://127.0.0.1:{slack.server.server_address[1]}/services/***"
        assert by_target[slack_url] == [(1, 200, "delivered")]
        assert all("s3cret" not in d["url"] for d in log)
        assert {d["event"] for d in log} == {"opened"}

        # The next finite step resolves the alert: a "resolved" event follows.
        post(client, "r1", "b3", {11: 2.8})
        resolved = flaky.wait_for(3)[-1]["json"]
        assert resolved["event"] == "resolved" and resolved["alert"]["status"] == "resolved"
        # A duplicate batch changes nothing and notifies nobody.
        post(client, "r1", "b3", {11: 2.8})

        # The run-wide log, and auth: another project's token sees a 404, not the log.
        assert len(client.get("/api/v1/runs/r1/deliveries").json()) >= 4
        assert client.get(url, headers={"Authorization": f"Bearer {other}"}).status_code == 404
        assert client.get("/api/v1/runs/r1/alerts/999999/deliveries").status_code == 404
        assert client.get("/api/v1/runs/nope/deliveries").status_code == 404
        client.app.state.alerts.stop()
    assert len(flaky.requests) == 3 and len(slack.requests) == 2


def _ingest_latencies(client: TestClient, run_id: str, n: int) -> list[float]:
    """Per-request latency of ``n`` batches that each open and resolve an alert (so each one
    hands a change to the notifier)."""
    client.post("/api/v1/runs", json={"id": run_id, "name": run_id})
    post(client, run_id, "warm", {s: 3.0 for s in range(10)})
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        post(client, run_id, f"b{i}", {10 + 2 * i: "nan", 11 + 2 * i: 3.0})
        out.append(time.perf_counter() - t0)
    return out


def test_a_hanging_webhook_does_not_slow_ingest(store, monkeypatch, request):
    n = 15
    client, _, _ = make_client(store, monkeypatch, None)
    base = _ingest_latencies(client, "plain", n)
    client.app.state.alerts.stop()

    with Receiver(hang=30) as stuck:
        client, _, _ = make_client(store, monkeypatch, stuck.url, webhook_timeout_s=20)
        hung = _ingest_latencies(client, "hooked", n)
        assert stuck.wait_for(1), "the dispatcher never reached the hanging webhook"
        stats = client.app.state.alerts.dispatcher.stats
        assert wait_until(lambda: stats["events"] >= 2 * n), stats  # each batch: opened + resolved
        client.app.state.alerts.stop(timeout=0.1)

    med_base, med_hung = statistics.median(base), statistics.median(hung)
    backend = request.node.callspec.params.get("backend_url", "?")
    print(f"\n[{backend}] ingest median latency: {med_base * 1000:.1f} ms without webhook, "
          f"{med_hung * 1000:.1f} ms with a hanging webhook (max {max(hung) * 1000:.1f} ms)")  # fmt: skip
    # Each hung delivery would cost 20 s; a generous bound that still catches any blocking.
    assert med_hung < med_base * 5 + 0.25
    assert max(hung) < 5.0


@pytest.fixture(autouse=True)
def _no_global_webhooks(monkeypatch):
    monkeypatch.delenv("STABMON_WEBHOOK_URLS", raising=False)
