"""Ingest: idempotent batches, overwrite rules, non-finite values, limits and bad input."""

from __future__ import annotations

import json
import math
import threading

from stabmon.wire import MAX_POINTS_PER_BATCH


def pts(steps, **values):  # noqa: ANN001, ANN201
    return [{"step": s, "values": dict(values)} for s in steps]


def series(api, run_id, keys, **q):  # noqa: ANN001, ANN201
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    r = api.client.get(f"/api/v1/runs/{run_id}/series?keys={keys}&{qs}", headers=api.headers)
    assert r.status_code == 200, r.text
    return r.json()["series"]


def test_batch_is_stored_and_acknowledged(api):
    api.create_run("r")
    r = api.post_points("r", "b1", pts(range(10), loss=2.5, **{"layer.0.fc2.l2_mean": 1.0}))
    assert r.status_code == 200
    assert r.json() == {"batch_id": "b1", "accepted": 20, "duplicate": False, "alerts": []}
    run = api.client.get("/api/v1/runs/r", headers=api.headers).json()
    assert run["last_step"] == 9
    assert series(api, "r", "loss")["loss"]["step"] == list(range(10))


def test_retried_batch_is_a_duplicate_and_not_stored_twice(api):
    api.create_run("r")
    api.post_points("r", "b1", pts([0, 1], loss=1.0))
    r = api.post_points("r", "b1", pts([0, 1], loss=99.0))
    assert r.status_code == 200 and r.json()["duplicate"] is True and r.json()["accepted"] == 0
    assert series(api, "r", "loss")["loss"]["last"] == [1.0, 1.0]


def test_concurrent_retries_store_once(api):
    api.create_run("r")
    results = []

    def send():
        results.append(api.post_points("r", "same", pts(range(50), loss=1.0)).json())

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["duplicate"] for r in results) == [False, True, True, True]
    assert sum(r["accepted"] for r in results) == 50


def test_repeats_in_a_batch_last_wins_and_later_batches_overwrite(api):
    api.create_run("r")
    batch = [{"step": 3, "values": {"loss": 1.0}}, {"step": 3, "values": {"loss": 2.0}}]
    r = api.post_points("r", "b1", batch)
    assert r.json()["accepted"] == 1
    assert series(api, "r", "loss")["loss"]["last"] == [2.0]
    api.post_points("r", "b2", [{"step": 3, "values": {"loss": 5.0}}])  # a resumed run re-sends step 3
    assert series(api, "r", "loss")["loss"]["last"] == [5.0]


def test_non_finite_values_round_trip(api):
    api.create_run("r")
    vals = [0.5, "nan", "inf", "-inf", -1e300]
    api.post_points("r", "b1", [{"step": i, "values": {"x": v}} for i, v in enumerate(vals)])
    got = series(api, "r", "x")["x"]
    assert got["last"] == vals
    assert got["nan_count"] == [0, 1, 0, 0, 0]
    latest = api.client.get("/api/v1/runs/r/latest", headers=api.headers).json()["values"]
    assert latest["x"] == {"step": 4, "value": -1e300}
    api.post_points("r", "b2", [{"step": 5, "values": {"x": "nan"}}])
    latest = api.client.get("/api/v1/runs/r/latest", headers=api.headers).json()["values"]
    assert latest["x"] == {"step": 5, "value": "nan"}


def test_store_round_trips_non_finite_floats(store):
    pid = store.ensure_project("p")
    from stabmon.wire import Point, RunCreate

    store.create_run(pid, RunCreate(id="r", name="r"))
    xs = [float("nan"), float("inf"), float("-inf"), 1.0]
    store.write_points(pid, "r", "b", [Point(step=i, values={"v": x}) for i, x in enumerate(xs)])
    got = store.series(pid, "r", ["v"]).series["v"].last
    assert math.isnan(got[0]) and got[1:] == xs[1:]


def test_multiple_ranks_are_kept_apart(api):
    api.create_run("r")
    api.post_points(
        "r",
        "b1",
        [{"step": 0, "rank": 0, "values": {"x": 1.0}}, {"step": 0, "rank": 1, "values": {"x": 2.0}}],
    )
    assert series(api, "r", "x")["x"]["last"] == [1.0]
    assert series(api, "r", "x", rank=1)["x"]["last"] == [2.0]


def test_latest_follows_the_highest_step(api):
    api.create_run("r")
    api.post_points("r", "b1", pts([10], x=1.0))
    api.post_points("r", "b2", pts([5], x=2.0))  # an older step arriving late does not win
    latest = api.client.get("/api/v1/runs/r/latest", headers=api.headers).json()["values"]
    assert latest["x"] == {"step": 10, "value": 1.0}


def test_bad_points_are_422_naming_the_problem(api):
    api.create_run("r")
    cases = {
        "negative step": [{"step": -1, "values": {"x": 1.0}}],
        "bad key": [{"step": 0, "values": {"bad key!": 1.0}}],
        "string value": [{"step": 0, "values": {"x": "1.0"}}],
        "null value": [{"step": 0, "values": {"x": None}}],
        "bool value": [{"step": 0, "values": {"x": True}}],
        "float step": [{"step": 1.5, "values": {"x": 1.0}}],
        "extra field": [{"step": 0, "values": {}, "extra": 1}],
    }
    for name, points in cases.items():
        r = api.post_points("r", "b", points)
        assert r.status_code == 422, name
        assert r.json()["detail"][0]["loc"].startswith("body.points.0"), (name, r.json())
    assert api.client.get("/api/v1/runs/r/keys", headers=api.headers).json()["keys"] == []


def test_too_many_points_names_the_limit(api):
    api.create_run("r")
    r = api.post_points("r", "b", pts(range(MAX_POINTS_PER_BATCH + 1)))
    assert r.status_code == 422
    assert str(MAX_POINTS_PER_BATCH) in r.text
    assert len(r.content) < 2000  # the rejected input is not echoed back


def test_malformed_json_and_wrong_shapes_are_4xx(api):
    api.create_run("r")
    url = "/api/v1/runs/r/points"
    h = {**api.headers, "content-type": "application/json"}
    for body in [b"{", b"[]", b"null", b'{"batch_id": "b"}', b'{"batch_id": "", "points": []}', b"\xff\xfe"]:
        r = api.client.post(url, content=body, headers=h)
        assert 400 <= r.status_code < 500, body


def test_unknown_run_is_404(api):
    r = api.post_points("ghost", "b", pts([0], x=1.0))
    assert r.status_code == 404 and "ghost" in r.json()["detail"]


def test_oversized_body_is_413_before_parsing(store):
    from monitor.settings import Settings
    from tests.monitor.conftest import make_api

    api = make_api(store, settings=Settings(db=store.url, max_body_bytes=4096))
    api.create_run("r")
    big = json.dumps({"batch_id": "b", "points": pts(range(200), x=1.0)}).encode()
    r = api.client.post(
        "/api/v1/runs/r/points", content=big, headers={**api.headers, "content-type": "application/json"}
    )
    assert r.status_code == 413 and "4096" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = api.client.post(
        "/api/v1/runs/r/points", content=chunks(), headers={**api.headers, "content-type": "application/json"}
    )
    assert r.status_code == 413 and "STABMON_MAX_BODY_BYTES" in r.json()["detail"]
    metrics = api.client.app.state.metrics
    assert (
        metrics.registry.get_sample_value("stabmon_requests_rejected_total", {"reason": "body_too_large"})
        == 2
    )
    assert api.client.get("/api/v1/runs/r/keys", headers=api.headers).json()["keys"] == []
