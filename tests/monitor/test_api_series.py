"""Series reads: downsampling that keeps spikes (checked against a reference), keys, latest."""

from __future__ import annotations

import math
import random

import pytest

from monitor.store.models import ROLLUP_STEPS


def reference(values: dict[int, float], lo: int, hi: int, width: int):  # noqa: ANN201
    """Per bucket: (last step, min, max, mean, last, count, nan_count) over non-NaN values."""
    out = []
    for b0 in range(lo, hi + 1, width):
        steps = [s for s in sorted(values) if b0 <= s < b0 + width and s <= hi]
        if not steps:
            continue
        xs = [values[s] for s in steps]
        finite = [x for x in xs if not math.isnan(x)]
        nan = float("nan")
        out.append(
            (
                steps[-1],
                min(finite) if finite else nan,
                max(finite) if finite else nan,
                sum(finite) / len(finite) if finite else nan,
                xs[-1],
                len(xs),
                len(xs) - len(finite),
            )
        )
    return out


def decode(v):  # noqa: ANN001, ANN201
    return float(v) if isinstance(v, str) else v


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-9 * max(1.0, abs(a))


@pytest.fixture
def spiky(api):  # noqa: ANN201
    """1,000 steps (with gaps) of a noisy series with one spike, NaNs and an inf."""
    api.create_run("r")
    rng = random.Random(0)
    values = {s: 1.0 + rng.random() for s in range(0, 1200) if s % 7 != 3}
    values[517] = 1e6  # the spike
    values[600] = float("nan")
    values[601] = float("nan")
    values[900] = float("inf")
    steps = sorted(values)
    for i in range(0, len(steps), 250):
        chunk = steps[i : i + 250]
        enc = lambda x: "nan" if math.isnan(x) else ("inf" if x == math.inf else x)  # noqa: E731
        r = api.post_points("r", f"b{i}", [{"step": s, "values": {"x": enc(values[s])}} for s in chunk])
        assert r.status_code == 200
    return values


@pytest.mark.parametrize("max_points", [1, 7, 75, 100, 5000])
def test_downsampling_matches_reference_and_keeps_the_spike(api, spiky, max_points):
    r = api.client.get(f"/api/v1/runs/r/series?keys=x&max_points={max_points}", headers=api.headers).json()
    lo, hi = min(spiky), max(spiky)
    width = max(1, math.ceil((hi - lo + 1) / max_points))
    if width < ROLLUP_STEPS:  # exact range and width
        assert (r["from"], r["to"], r["bucket_width"]) == (lo, hi, width)
    else:  # whole 16-step chunks: range aligned outward, width a multiple of 16
        assert r["from"] == lo - lo % ROLLUP_STEPS and r["to"] >= hi and (r["to"] + 1) % ROLLUP_STEPS == 0
        assert r["bucket_width"] >= width and r["bucket_width"] % ROLLUP_STEPS == 0
    assert r["downsampled"] == (r["bucket_width"] > 1)
    got = r["series"]["x"]
    ref = reference(spiky, r["from"], r["to"], r["bucket_width"])
    assert len(got["step"]) == len(ref) <= max_points
    for i, (step, mn, mx, mean, last, n, n_nan) in enumerate(ref):
        assert got["step"][i] == step
        assert same(decode(got["min"][i]), mn) and same(decode(got["max"][i]), mx)
        assert same(decode(got["last"][i]), last)
        assert (got["count"][i], got["nan_count"][i]) == (n, n_nan)
        if not math.isinf(mean):
            assert same(decode(got["mean"][i]), mean)
    if max_points >= 7:  # with fewer buckets the spike shares one with the inf, which is larger
        assert 1e6 in [decode(v) for v in got["max"]]
    assert sum(got["nan_count"]) == 2


@pytest.mark.parametrize("max_points", [3, 40])  # rollups, then points
def test_overwritten_values_update_the_summaries(api, max_points):
    api.create_run("r")
    api.post_points("r", "b1", [{"step": s, "values": {"x": 1.0}} for s in range(100)])
    api.post_points("r", "b2", [{"step": 50, "values": {"x": 9.0}}, {"step": 51, "values": {"x": "nan"}}])
    got = api.client.get(f"/api/v1/runs/r/series?keys=x&max_points={max_points}", headers=api.headers).json()
    x = got["series"]["x"]
    assert sum(x["count"]) == 100 and sum(x["nan_count"]) == 1
    assert max(x["max"]) == 9.0 and min(x["min"]) == 1.0


def test_step_range_limits_the_query(api, spiky):
    r = api.client.get("/api/v1/runs/r/series?keys=x&from=510&to=520", headers=api.headers).json()
    assert r["bucket_width"] == 1
    assert r["series"]["x"]["step"] == [s for s in range(510, 521) if s in spiky]
    assert 1e6 in r["series"]["x"]["max"]


def test_unknown_keys_come_back_empty_and_bad_params_are_422(api, spiky):
    r = api.client.get("/api/v1/runs/r/series?keys=x,not_there", headers=api.headers)
    assert r.status_code == 200 and r.json()["series"]["not_there"]["step"] == []
    for q in ["keys=", "keys=bad%20key", "keys=x&from=-1", "keys=x&from=10&to=5", "keys=x&max_points=0", ""]:
        resp = api.client.get(f"/api/v1/runs/r/series?{q}", headers=api.headers)
        assert resp.status_code == 422, q


def test_keys_lists_parsed_series_with_last_step(api):
    api.create_run("r")
    api.post_points("r", "b", [{"step": 4, "values": {"loss": 1.0, "layer.2.qkv.l2_mean": 3.0}}])
    keys = api.client.get("/api/v1/runs/r/keys", headers=api.headers).json()["keys"]
    assert keys == [
        {"key": "layer.2.qkv.l2_mean", "layer": 2, "site": "qkv", "stat": "l2_mean", "last_step": 4},
        {"key": "loss", "layer": None, "site": None, "stat": "loss", "last_step": 4},
    ]


def test_empty_run_series_and_latest(api):
    api.create_run("r")
    r = api.client.get("/api/v1/runs/r/series?keys=loss", headers=api.headers).json()
    assert r["series"]["loss"]["step"] == [] and r["from"] is None
    assert api.client.get("/api/v1/runs/r/latest", headers=api.headers).json() == {
        "run_id": "r",
        "values": {},
    }
