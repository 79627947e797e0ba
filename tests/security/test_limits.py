"""Every documented input limit (docs/limits.md) is enforced with a 4xx whose message names
the limit, on SQLite and PostgreSQL; a batch refused for a limit stores nothing."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from monitor.api import create_app
from monitor.settings import Settings
from stabmon.wire import MAX_BATCH_ID_LEN, MAX_KEY_LEN, MAX_POINTS_PER_BATCH, MAX_STEP, MAX_VALUES_PER_POINT

BODY_LIMIT = 64 * 1024
SERIES_LIMIT = 40


@pytest.fixture
def lim(store):  # noqa: ANN201
    settings = Settings(db=store.url, max_body_bytes=BODY_LIMIT, max_series_per_run=SERIES_LIMIT)
    client = TestClient(create_app(settings, store=store))
    token, _ = store.create_token("limits")
    client.headers["Authorization"] = f"Bearer {token}"
    assert client.post("/api/v1/runs", json={"id": "r", "name": "r"}).status_code == 201
    return client


def _post(client, points, batch_id="b"):  # noqa: ANN001, ANN202
    return client.post("/api/v1/runs/r/points", json={"batch_id": batch_id, "points": points})


def _detail(r) -> str:  # noqa: ANN001
    return json.dumps(r.json()["detail"])


def _nothing_stored(client) -> bool:  # noqa: ANN001
    return client.get("/api/v1/runs/r/keys").json()["keys"] == []


def test_body_size_limit_by_content_length_and_by_streamed_bytes(lim):
    big = {"batch_id": "b", "points": [{"step": 0, "values": {"loss": 1.0}}], "pad": "x" * BODY_LIMIT}
    r = lim.post("/api/v1/runs/r/points", json=big)
    assert r.status_code == 413 and f"the limit is {BODY_LIMIT} bytes (STABMON_MAX_BODY_BYTES)" in _detail(r)

    def chunks():  # noqa: ANN202 - no Content-Length: the limit is counted as bytes arrive
        yield b'{"batch_id":"b","points":['
        for i in range(4000):
            yield (b"," if i else b"") + json.dumps({"step": i, "values": {"loss": 1.0}}).encode()
        yield b"]}"

    r = lim.post("/api/v1/runs/r/points", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "STABMON_MAX_BODY_BYTES" in _detail(r)
    assert _nothing_stored(lim)


def test_points_per_batch(lim, store):
    client = TestClient(create_app(Settings(db=store.url), store=store))  # default 16 MiB body limit
    client.headers.update(lim.headers)
    pts = [{"step": i, "values": {"a": 1}} for i in range(MAX_POINTS_PER_BATCH + 1)]
    r = client.post("/api/v1/runs/r/points", json={"batch_id": "b", "points": pts})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == "body.points" and str(MAX_POINTS_PER_BATCH) in _detail(r)
    assert _post(client, pts[:MAX_POINTS_PER_BATCH]).status_code == 200  # at the limit: accepted


def test_values_per_point(lim, store):
    client = TestClient(create_app(Settings(db=store.url), store=store))
    client.headers.update(lim.headers)
    vals = {f"k{i}": 1.0 for i in range(MAX_VALUES_PER_POINT + 1)}
    r = client.post("/api/v1/runs/r/points", json={"batch_id": "b", "points": [{"step": 0, "values": vals}]})
    assert r.status_code == 422 and str(MAX_VALUES_PER_POINT) in _detail(r)
    assert r.json()["detail"][0]["loc"] == "body.points.0.values"


@pytest.mark.parametrize(
    "key",
    [
        "k" * (MAX_KEY_LEN + 1),
        "layer.0.fc2.l2-mean",
        "layer..x",
        ".loss",
        "loss.",
        "0loss",
        "lo ss",
        "löss",
        "",
    ],
)
def test_series_key_length_and_charset(lim, key):
    r = _post(lim, [{"step": 0, "values": {key: 1.0}}])
    assert r.status_code == 422, key
    assert "limit: key length/charset" in _detail(r) and str(MAX_KEY_LEN) in _detail(r)
    assert _nothing_stored(lim)


def test_key_at_the_length_limit_is_accepted(lim):
    key = "k" * MAX_KEY_LEN
    assert _post(lim, [{"step": 0, "values": {key: 1.0}}]).status_code == 200


def test_series_per_run(lim):
    first = {f"s{i}": 1.0 for i in range(SERIES_LIMIT - 1)}
    assert _post(lim, [{"step": 0, "values": first}], "b1").status_code == 200
    r = _post(lim, [{"step": 1, "values": {"loss": 1.0, "extra1": 1.0, "s0": 2.0}}], "b2")
    assert r.status_code == 422
    assert f"the limit is {SERIES_LIMIT} (STABMON_MAX_SERIES_PER_RUN)" in _detail(r)
    assert "series per run" in _detail(r)
    # Refused whole: not even the value of the existing series s0 at step 1 was stored.
    assert lim.get("/api/v1/runs/r/latest").json()["values"]["s0"] == {"step": 0, "value": 1.0}
    # The same batch id is not burnt: once it fits, it is stored.
    assert _post(lim, [{"step": 1, "values": {"loss": 1.0, "s0": 2.0}}], "b2").status_code == 200
    assert len(lim.get("/api/v1/runs/r/keys").json()["keys"]) == SERIES_LIMIT
    assert _post(lim, [{"step": 2, "values": {"one_more": 1.0}}], "b3").status_code == 422


@pytest.mark.parametrize(
    ("point", "where"),
    [
        ({"step": -1, "values": {}}, "step"),
        ({"step": MAX_STEP + 1, "values": {}}, "step"),
        ({"step": 1.5, "values": {}}, "step"),
        ({"step": 0, "rank": 65_536, "values": {}}, "rank"),
        ({"step": 0, "values": {"loss": "NaN"}}, "values"),
        ({"step": 0, "values": {"loss": "1.0"}}, "values"),
        ({"step": 0, "values": {"loss": None}}, "values"),
        ({"step": 0, "values": {"loss": True}}, "values"),
        ({"step": 0, "values": {}, "extra": 1}, "extra"),
    ],
)
def test_point_fields(lim, point, where):
    r = _post(lim, [point])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"].startswith("body.points.0"), r.text
    assert where in r.json()["detail"][0]["loc"]


def test_batch_id_and_run_fields(lim):
    r = _post(lim, [], batch_id="b" * (MAX_BATCH_ID_LEN + 1))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == "body.batch_id"
    assert str(MAX_BATCH_ID_LEN) in _detail(r)
    for body, loc in [
        ({"name": "x" * 201}, "body.name"),
        ({"name": "ok", "id": "bad id!"}, "body.id"),
        ({"name": "ok", "id": "x" * 65}, "body.id"),
    ]:
        r = lim.post("/api/v1/runs", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, (body, r.text)


def test_query_limits(lim):
    keys = ",".join(f"k{i}" for i in range(201))
    r = lim.get("/api/v1/runs/r/series", params={"keys": keys})
    assert r.status_code == 422 and "at most 200 keys per query" in _detail(r)
    r = lim.get("/api/v1/runs/r/series", params={"keys": "loss", "max_points": 20_001})
    assert r.status_code == 422 and "max_points" in _detail(r)
    r = lim.get("/api/v1/runs", params={"limit": 501})
    assert r.status_code == 422 and "limit" in _detail(r)
    r = lim.get("/api/v1/runs/r/series", params={"keys": "loss", "from": 10, "to": 5})
    assert r.status_code == 422 and "before from" in _detail(r)
