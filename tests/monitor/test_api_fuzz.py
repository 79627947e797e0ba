"""No input makes the collector answer 5xx: random JSON bodies and query strings against the
write and read endpoints, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.monitor.conftest import make_api

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
point = st.fixed_dictionaries(
    {
        "step": json_values | st.integers(-5, 10),
        "values": st.dictionaries(st.text(max_size=12), json_values, max_size=3),
    }
)
points_body = json_values | st.fixed_dictionaries(
    {"batch_id": json_values | st.text(max_size=10), "points": st.lists(point, max_size=3) | json_values}
)


@pytest.fixture
def fuzz_api(session_store):  # noqa: ANN201
    session_store.truncate()
    api = make_api(session_store)
    api.create_run("r")
    return api


def _send(api, method, path, body):  # noqa: ANN001, ANN202
    raw = json.dumps(body, allow_nan=True).encode()  # NaN tokens too: Python's parser accepts them
    return api.client.request(
        method, path, content=raw, headers={**api.headers, "content-type": "application/json"}
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=points_body)
def test_random_point_batches_never_5xx(fuzz_api, body):
    r = _send(fuzz_api, "POST", "/api/v1/runs/r/points", body)
    assert r.status_code < 500, r.text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=json_values | st.fixed_dictionaries({"name": st.text(max_size=5), "config": json_values}))
def test_random_run_bodies_never_5xx(fuzz_api, body):
    r = _send(fuzz_api, "POST", "/api/v1/runs", body)
    assert r.status_code < 500, r.text
    r = _send(fuzz_api, "PATCH", "/api/v1/runs/r", body)
    assert r.status_code < 500, r.text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    keys=st.text(max_size=30),
    frm=st.text(max_size=6) | st.integers(-3, 2**64).map(str),
    mp=st.text(max_size=6) | st.integers(-3, 10**6).map(str),
)
def test_random_series_queries_never_5xx(fuzz_api, keys, frm, mp):
    r = fuzz_api.client.get(
        "/api/v1/runs/r/series",
        params={"keys": keys, "from": frm, "max_points": mp},
        headers=fuzz_api.headers,
    )
    assert r.status_code < 500, r.text
