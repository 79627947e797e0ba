"""Property tests (hypothesis) for the ingest payload path and the detector, on SQLite and
PostgreSQL.

Ingest: arbitrary batches -- finite and non-finite values, huge, tiny and subnormal
magnitudes, points missing some keys, steps repeated inside a batch and out of order across
batches, several ranks -- are accepted, and what is read back through the API is exactly
what the wire semantics say was stored (a repeated (step, rank, key) keeps the value sent
last): NaN stays NaN, -inf stays -inf, every finite float survives bit for bit (up to the
sign of zero), and ``latest`` holds the value at the highest step.

Detector: arbitrary value streams (any finite or non-finite float, any key of the grammar,
steps repeated or going backwards) never raise, the state always serialises to strict JSON,
and a detector restored from a snapshot taken mid-stream reports exactly what the original
reports for the rest of the stream (what a collector restart relies on).
"""

from __future__ import annotations

import itertools
import json
import math

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.api import create_app
from monitor.settings import Settings
from stabmon.detect import Detector, DetectorState
from stabmon.wire import decode_value, encode_value

KEYS = ["loss", "grad_norm", "layer.0.fc2.l2_mean", "layer.1.attn.logit_max", "layer.1.attn.entropy_mean"]
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e-300, max_value=1e-300),  # tiny and subnormal
    st.sampled_from([1e308, -1e308, 5e-324, -5e-324, 2.0**53 + 1, 0.1, -0.0]),
)
point = st.builds(
    lambda step, rank, vals: {"step": step, "rank": rank, "values": vals},
    st.integers(0, 40),
    st.integers(0, 2),
    st.dictionaries(st.sampled_from(KEYS), floats, max_size=len(KEYS)),  # keys may be missing
)
batches = st.lists(st.lists(point, min_size=0, max_size=12), min_size=1, max_size=4)
_ids = itertools.count()


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(batches=batches)
# Found by this test: a later batch with the same step on a higher rank took over ``latest``.
@example(
    batches=[
        [{"step": 0, "rank": 0, "values": {"loss": 1.0}}],
        [{"step": 0, "rank": 1, "values": {"loss": 0.0}}],
    ]
)
def test_ingest_round_trips_exactly(session_store, batches):
    store = session_store
    if not hasattr(store, "_roundtrip_client"):
        client = TestClient(create_app(Settings(db=store.url), store=store))
        token, _ = store.create_token(f"props{next(_ids)}")
        client.headers["Authorization"] = f"Bearer {token}"
        store._roundtrip_client = client
    client = store._roundtrip_client
    run_id = f"prop-{next(_ids)}"
    assert client.post("/api/v1/runs", json={"id": run_id, "name": run_id}).status_code == 201
    truth: dict[tuple[str, int, int], float] = {}
    for i, pts in enumerate(batches):
        body = {
            "batch_id": f"b{i}",
            "points": [{**p, "values": {k: encode_value(v) for k, v in p["values"].items()}} for p in pts],
        }
        raw = json.dumps(body, allow_nan=False)  # strict JSON: non-finite values travel as strings
        r = client.post(
            f"/api/v1/runs/{run_id}/points", content=raw, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 200, r.text
        for p in pts:
            for k, v in p["values"].items():
                truth[(k, p["rank"], p["step"])] = v
    keys = sorted({k for k, _, _ in truth})
    for rank in range(3):
        want = {(k, s): v for (k, rk, s), v in truth.items() if rk == rank}
        if not want:
            continue
        r = client.get(
            f"/api/v1/runs/{run_id}/series",
            params={"keys": ",".join(keys), "rank": rank, "max_points": 1000},
        )
        assert r.status_code == 200, r.text
        got = {}
        for k, ser in r.json()["series"].items():
            assert set(ser["count"]) <= {1}
            for s, last in zip(ser["step"], ser["last"], strict=True):
                got[(k, s)] = decode_value(last)
        assert set(got) == set(want)
        bad = [(kk, want[kk], got[kk]) for kk in want if not _same(want[kk], got[kk])]
        assert not bad, bad[:5]
    latest = client.get(f"/api/v1/runs/{run_id}/latest").json()["values"]
    for k in keys:
        top = max(s for (kk, _, s) in truth if kk == k)
        rank = min(rk for (kk, rk, s) in truth if kk == k and s == top)
        assert latest[k]["step"] == top
        assert _same(decode_value(latest[k]["value"]), truth[(k, rank, top)]), (k, latest[k], batches)


grammar_keys = st.one_of(
    st.sampled_from(KEYS + ["lr", "val_loss", "tokens_per_s"]),
    st.builds(
        lambda i, site, stat: f"layer.{i}.{site}.{stat}",
        st.integers(0, 3),
        st.sampled_from(["qkv", "proj", "fc1", "fc2", "attn", "q", "k", "v"]),
        st.sampled_from(["l2_mean", "l2_max", "logit_max", "logit_bound", "entropy_mean", "other"]),
    ),
)
streams = st.lists(
    st.tuples(st.integers(0, 400), st.dictionaries(grammar_keys, floats, max_size=6)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(stream=streams, cut=st.integers(0, 120))
def test_detector_never_raises_and_restores_exactly(stream, cut):
    det = Detector()
    stream = sorted(stream, key=lambda x: x[0]) if cut % 2 else stream  # also out of order
    state = det.new_state()
    for step, values in stream[:cut]:
        det.observe(state, step, values)
    snapshot = state.to_json()
    json.loads(snapshot)  # strict JSON (no bare NaN/Infinity)
    restored = DetectorState.from_dict(json.loads(snapshot))
    det2 = Detector()
    for step, values in stream[cut:]:
        a = [f.to_dict() for f in det.observe(state, step, values)]
        b = [f.to_dict() for f in det2.observe(restored, step, values)]
        assert json.dumps(a, default=str) == json.dumps(b, default=str)
    json.loads(state.to_json())


def test_sums_past_the_float_range_are_inf_not_an_error(store):
    """Found by the round-trip property: on PostgreSQL a float8 ``sum`` of two 1e308 values
    raised an overflow error (a 500) when a batch re-aggregated its chunk summaries."""
    client = TestClient(create_app(Settings(db=store.url), store=store))
    token, _ = store.create_token("overflow")
    client.headers["Authorization"] = f"Bearer {token}"
    assert client.post("/api/v1/runs", json={"id": "big", "name": "big"}).status_code == 201
    for i, steps in enumerate(
        [range(16, 64), range(0, 16), range(16, 20)]
    ):  # appended, back-filled, rewritten
        pts = [{"step": s, "values": {"loss": 1e308, "grad_norm": -1e308 if s % 2 else 1e308}} for s in steps]
        r = client.post("/api/v1/runs/big/points", json={"batch_id": f"b{i}", "points": pts})
        assert r.status_code == 200, r.text
    r = client.get("/api/v1/runs/big/series", params={"keys": "loss,grad_norm", "max_points": 2})
    assert r.status_code == 200 and r.json()["downsampled"], r.text
    loss, grad = r.json()["series"]["loss"], r.json()["series"]["grad_norm"]
    assert [decode_value(x) for x in loss["max"]] == [1e308, 1e308]
    assert all(decode_value(x) == math.inf for x in loss["mean"])  # the sum overflowed, IEEE-style
    assert sum(loss["count"]) == 64 and sum(grad["count"]) == 64
    assert [decode_value(x) for x in grad["min"]] == [-1e308, -1e308]
