"""Detector state: JSON snapshots restore to a state that behaves exactly like the uninterrupted
one, ``replay`` equals streaming, and no input — non-finite, huge, tiny, missing keys — raises."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stabmon.detect import Detector, DetectorConfig, DetectorState, replay

KEYS = [
    "loss",
    "grad_norm",
    "layer.0.qkv.l2_mean",
    "layer.0.fc2.l2_max",
    "layer.1.proj.l2_mean",
    "layer.0.attn.logit_max",
    "layer.1.attn.logit_bound",
    "layer.1.attn.entropy_mean",
    "tokens_per_s",
]

any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e300, max_value=1e300),
    st.floats(min_value=0.0, max_value=1e-300),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 3.0, 1e4]),
)
step_values = st.dictionaries(st.sampled_from(KEYS), any_float, max_size=len(KEYS))
# Strictly increasing steps with arbitrary gaps (sparse monitoring), each with a subset of keys.
runs = st.lists(st.tuples(st.integers(1, 60), step_values), min_size=1, max_size=60).map(
    lambda xs: [(sum(g for g, _ in xs[: i + 1]), v) for i, (_, v) in enumerate(xs)]
)
# Small windows so short examples reach every code path (baselines, full windows, hysteresis).
SMALL = DetectorConfig.from_overrides(
    {
        "norm_growth": {"window_steps": 8, "window_points": 4, "window_min_points": 2, "burn_in_steps": 3},
        "norm_growth.baseline_points": 2,
        "entropy_collapse": {"burn_in": 0, "baseline_points": 2},
        "loss_spike": {"window": 6, "min_points": 3},
        "grad_spike": {"window": 6, "min_points": 3},
    }
)


def realistic(n: int) -> list[tuple[int, dict[str, float]]]:
    """A run that diverges half-way: every rule gets to fire, then NaN arrives."""
    out = []
    for s in range(n):
        b = max(0, s - n // 2)
        out.append(
            (
                s * 2,
                {
                    "loss": 3.0 + 0.01 * math.sin(s) + (5.0 if s == n // 3 else 0.0),
                    "grad_norm": 1.0 + 0.1 * math.cos(s) + (30.0 if b > 3 else 0.0),
                    "layer.0.fc2.l2_mean": 3.0 * 1.5**b,
                    "layer.0.attn.logit_max": 5.0 * 1.6**b,
                    "layer.0.attn.entropy_mean": 2.0 / 1.3**b,
                    "layer.1.qkv.l2_max": float("nan") if s > n - 5 else 10.0,
                },
            )
        )
    return out


def roundtrip(state: DetectorState) -> DetectorState:
    text = json.dumps(state.to_dict(), allow_nan=False)  # raises on NaN/inf left in the state
    return DetectorState.from_dict(json.loads(text))


def check_snapshot_equivalence(det: Detector, points, cut: int) -> None:
    a = det.new_state()
    b = det.new_state()
    for step, values in points[:cut]:
        assert det.observe(a, step, values) == det.observe(b, step, values)
    b = roundtrip(b)
    for step, values in points[cut:]:
        assert det.observe(a, step, values) == det.observe(b, step, values)
    assert roundtrip(a).to_dict() == b.to_dict()


@pytest.mark.parametrize("cut", [0, 5, 30, 55, 79, 80])
def test_snapshot_mid_run_continues_identically(cut):
    points = realistic(80)
    det = Detector()
    findings = [f for s, v in points for f in det.observe(det.new_state(), s, v)]
    assert findings  # the scenario does exercise the rules
    check_snapshot_equivalence(det, points, cut)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=runs, cut=st.integers(0, 60))
def test_snapshot_roundtrip_property(points, cut):
    check_snapshot_equivalence(Detector(SMALL), points, min(cut, len(points)))


@settings(max_examples=100, deadline=None)
@given(points=runs)
def test_arbitrary_values_never_raise_and_findings_are_well_formed(points):
    for det in (Detector(), Detector(SMALL)):
        state = det.new_state()
        for step, values in points:
            findings = det.observe(state, step, values)
            assert len({f.rule for f in findings}) == len(findings)
            for f in findings:
                assert f.severity in ("warning", "critical") and f.step == step
                json.dumps(f.to_dict(), allow_nan=False)
        json.dumps(state.to_dict(), allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(points=runs)
def test_replay_equals_streaming(points):
    det = Detector(SMALL)
    state = det.new_state()
    streamed = [f for step, values in points for f in det.observe(state, step, values)]
    replayed_state, replayed = replay(det, points)
    assert replayed == streamed
    assert replayed_state.to_dict() == state.to_dict()


def test_replay_of_a_diverging_run_reports_every_rule():
    _, findings = replay(Detector(), realistic(80))
    assert {f.rule for f in findings} == {
        "loss_spike",
        "grad_spike",
        "norm_growth",
        "logit_max",
        "entropy_collapse",
        "non_finite",
    }
    assert all(f.severity == "critical" for f in findings if f.rule == "non_finite")


def test_new_state_is_empty_and_json_able():
    d = Detector().new_state().to_dict()
    assert d["last_step"] is None and json.loads(json.dumps(d)) == d


def test_to_dict_is_a_snapshot_not_a_view():
    det = Detector()
    state = det.new_state()
    det.observe(state, 0, {"loss": 1.0})
    snap = state.to_dict()
    det.observe(state, 1, {"loss": 2.0})
    assert snap["last_step"] == 0 and snap["rules"]["loss_spike"]["loss"]["win"] == [1.0]


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"version": 99, "rules": {}},
        {"version": 1, "last_step": "3", "rules": {}},
        {"version": 1, "last_step": 3, "rules": {"loss_spike": []}},
        {"version": 1, "last_step": 3, "rules": {"non_finite": {"loss": {"v": {"__float__": "big"}}}}},
    ],
)
def test_from_dict_rejects_malformed_snapshots(bad):
    with pytest.raises(ValueError):
        DetectorState.from_dict(bad)
