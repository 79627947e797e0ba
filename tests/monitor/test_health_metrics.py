"""Health probes, database outages (503 + Retry-After) and the app's Prometheus metrics."""

from __future__ import annotations

import math

from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.settings import Settings
from monitor.store import Store
from tests.monitor.conftest import make_api

DEAD_DB = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"


def test_healthz_and_readyz(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}


def test_database_down_is_503_with_retry_after():
    store = Store(DEAD_DB)
    client = TestClient(create_app(Settings(db=DEAD_DB, retry_after_s=7), store=store))
    assert client.get("/healthz").status_code == 200
    for path in ["/readyz", "/api/v1/runs"]:
        r = client.get(path, headers={"Authorization": "Bearer stm_x"})
        assert r.status_code == 503, path
        assert r.headers["retry-after"] == "7" and "database unavailable" in r.json()["detail"]
    r = client.post(
        "/api/v1/runs/r/points", json={"batch_id": "b", "points": []}, headers={"Authorization": "Bearer t"}
    )
    assert r.status_code == 503
    m = client.app.state.metrics.registry
    assert m.get_sample_value("stabmon_requests_rejected_total", {"reason": "db_unavailable"}) == 3
    assert client.get("/metrics").status_code == 200  # the scrape survives a database outage
    store.dispose()


def test_ingest_counters_and_request_histogram(api):
    api.create_run("r")
    api.post_points("r", "b1", [{"step": s, "values": {"loss": 1.0, "lr": 0.1}} for s in range(5)])
    api.post_points("r", "b1", [{"step": 0, "values": {"loss": 1.0}}])
    api.client.get("/api/v1/runs/r", headers={"Authorization": "Bearer wrong"})
    reg = api.client.app.state.metrics.registry
    assert reg.get_sample_value("stabmon_points_ingested_total") == 10
    assert reg.get_sample_value("stabmon_batches_ingested_total", {"result": "stored"}) == 1
    assert reg.get_sample_value("stabmon_batches_ingested_total", {"result": "duplicate"}) == 1
    assert reg.get_sample_value("stabmon_requests_rejected_total", {"reason": "unauthenticated"}) == 1
    labels = {"route": "/api/v1/runs/{run_id}/points", "method": "POST", "status": "2xx"}
    assert reg.get_sample_value("stabmon_request_duration_seconds_count", labels) == 2


def test_scrape_time_gauges_for_active_runs(api):
    api.create_run("r")
    api.create_run("done")
    pts = [{"step": 7, "values": {"loss": 2.0, "layer.3.fc2.l2_mean": 5.5, "layer.0.attn.logit_max": "inf"}}]
    api.post_points("r", "b1", pts)
    api.post_points("done", "b1", pts)
    api.client.patch("/api/v1/runs/done", json={"status": "finished"}, headers=api.headers)
    reg = api.client.app.state.metrics.registry
    get = reg.get_sample_value
    r = {"project": "alpha", "run": "r"}
    assert get("stabmon_series_latest", {**r, "layer": "3", "site": "fc2", "stat": "l2_mean"}) == 5.5
    assert get("stabmon_series_latest", {**r, "layer": "", "site": "", "stat": "loss"}) == 2.0
    logit = {**r, "layer": "0", "site": "attn", "stat": "logit_max"}
    assert get("stabmon_series_latest", logit) == float("inf")
    assert get("stabmon_run_last_step", r) == 7
    assert get("stabmon_run_last_step", {"project": "alpha", "run": "done"}) is None  # finished runs drop out
    text = api.client.get("/metrics").text
    assert 'stabmon_series_latest{layer="3",project="alpha",run="r",site="fc2",stat="l2_mean"} 5.5' in text


def test_same_run_id_in_two_projects_is_two_sets_of_gauges(api):
    api.create_run("exp-1")
    r = api.client.post("/api/v1/runs", json={"id": "exp-1", "name": "b"}, headers=api.other_headers)
    assert r.status_code == 201
    api.post_points("exp-1", "b1", [{"step": 3, "values": {"loss": 1.5}}])
    api.post_points("exp-1", "b1", [{"step": 9, "values": {"loss": "nan"}}], headers=api.other_headers)
    get = api.client.app.state.metrics.registry.get_sample_value
    a, b = {"project": "alpha", "run": "exp-1"}, {"project": "beta", "run": "exp-1"}
    loss = {"layer": "", "site": "", "stat": "loss"}
    assert (get("stabmon_run_last_step", a), get("stabmon_run_last_step", b)) == (3, 9)
    assert get("stabmon_series_latest", {**a, **loss}) == 1.5
    assert math.isnan(get("stabmon_series_latest", {**b, **loss}))
    critical = {"rule": "non_finite", "severity": "critical"}
    assert get("stabmon_alert_active", {**a, **critical}) is None
    assert get("stabmon_alert_active", {**b, **critical}) == 1


def test_open_alert_gauge(api):
    api.create_run("r")
    api.post_points("r", "b1", [{"step": 0, "values": {"loss": "nan"}}])
    reg = api.client.app.state.metrics.registry
    assert (
        reg.get_sample_value(
            "stabmon_alert_active",
            {"project": "alpha", "run": "r", "rule": "non_finite", "severity": "critical"},
        )
        == 1
    )


def test_metrics_token_protects_the_endpoint(store):
    api = make_api(store, settings=Settings(db=store.url, metrics_token="scrape-secret"))
    assert api.client.get("/metrics").status_code == 401
    assert api.client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    r = api.client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert r.status_code == 200 and "stabmon_points_ingested_total" in r.text


def test_each_app_has_its_own_registry(store):
    a, b = make_api(store), make_api(store)
    a.create_run("r")
    a.post_points("r", "b", [{"step": 0, "values": {"loss": 1.0}}])
    assert a.client.app.state.metrics.registry.get_sample_value("stabmon_points_ingested_total") == 1
    assert b.client.app.state.metrics.registry.get_sample_value("stabmon_points_ingested_total") == 0


def test_openapi_documents_the_api(api):
    spec = api.client.get("/openapi.json").json()
    for path in [
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/points",
        "/api/v1/runs/{run_id}/series",
        "/api/v1/runs/{run_id}/keys",
        "/api/v1/runs/{run_id}/latest",
        "/api/v1/runs/{run_id}/alerts",
        "/healthz",
        "/readyz",
    ]:
        assert path in spec["paths"], path
