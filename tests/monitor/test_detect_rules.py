"""Each detector rule on constructed series: it fires on the pathology it watches, stays quiet on
stable noisy series, keeps firing while the condition holds, and resolves when it clears."""

from __future__ import annotations

import json
import math
import random

import pytest

from stabmon.detect import Detector, DetectorConfig, Finding


def run(det: Detector, steps: list[tuple[int, dict[str, float]]]) -> list[list[Finding]]:
    state = det.new_state()
    return [det.observe(state, step, values) for step, values in steps]


def rules_at(per_step: list[list[Finding]], i: int) -> dict[str, str]:
    return {f.rule: f.severity for f in per_step[i]}


def noisy(rng: random.Random, level: float, rel: float) -> float:
    return level * (1.0 + rel * rng.gauss(0.0, 1.0))


def stable_run(n: int = 400, seed: int = 0, layers: int = 4) -> list[tuple[int, dict[str, float]]]:
    """A healthy run: falling loss with noise, noisy grad norm with a few benign 2x bumps, norms
    that grow slowly (3x over the run), logits in the tens, slowly sharpening attention."""
    rng = random.Random(seed)
    out = []
    for step in range(n):
        t = step / n
        values = {
            "loss": 2.5 + 3.0 * math.exp(-step / 60) + 0.03 * rng.gauss(0, 1),
            "grad_norm": noisy(rng, 1.0, 0.15) * (2.0 if rng.random() < 0.02 else 1.0),
            "lr": 1e-3,
        }
        for i in range(layers):
            for site, base in (("qkv", 16.0), ("proj", 4.0), ("fc1", 20.0), ("fc2", 3.0)):
                values[f"layer.{i}.{site}.l2_mean"] = noisy(rng, base * (1 + 2 * t), 0.05)
                values[f"layer.{i}.{site}.l2_max"] = noisy(rng, 3 * base * (1 + 2 * t), 0.1)
            values[f"layer.{i}.attn.logit_max"] = noisy(rng, 5 + 40 * t, 0.1)
            values[f"layer.{i}.attn.entropy_mean"] = noisy(rng, 3.0 - 1.5 * t, 0.02)
        out.append((step, values))
    return out


def test_stable_noisy_run_is_quiet():
    per_step = run(Detector(), stable_run())
    fired = [f for fs in per_step for f in fs]
    assert fired == [], fired[:3]


def test_norm_growth_fires_names_worst_site_and_escalates():
    rng = random.Random(1)
    steps = []
    for step in range(180):
        values = {f"layer.{i}.fc2.l2_mean": noisy(rng, 3.0, 0.05) for i in range(4)}
        values["layer.2.qkv.l2_mean"] = noisy(rng, 16.0, 0.05)
        if step >= 140:  # after the burn-in, layer 3 FC2 blows up by 1.4x per step
            values["layer.3.fc2.l2_mean"] = 3.0 * 1.4 ** (step - 140)
            values["layer.2.qkv.l2_mean"] = 16.0 * 1.15 ** (step - 140)
        steps.append((step, values))
    per_step = run(Detector(), steps)
    assert all("norm_growth" not in rules_at(per_step, i) for i in range(140))
    first = next(i for i, fs in enumerate(per_step) if fs)
    assert 150 <= first <= 154  # 1.4x per step passes the 30x warning at step ~150 (+ sustain)
    assert rules_at(per_step, first)["norm_growth"] == "warning"
    assert rules_at(per_step, 160)["norm_growth"] == "critical"
    f = per_step[170][0]
    assert f.message.startswith("output norms growing: layer.3.fc2.l2_mean grew ")
    assert "layer.2.qkv.l2_mean" in f.message
    assert [s["key"] for s in f.evidence["series"]][:2] == ["layer.3.fc2.l2_mean", "layer.2.qkv.l2_mean"]
    json.dumps(f.to_dict(), allow_nan=False)


def test_norm_growth_single_outlier_does_not_fire():
    steps = [(s, {"layer.0.qkv.l2_mean": 500.0 if s == 130 else 16.0}) for s in range(160)]
    assert not any(run(Detector(), steps))


def test_norm_growth_blow_up_then_plateau_keeps_firing_then_resolves_when_norms_return():
    def norm(step: int) -> float:
        if step < 120:
            return 3.0
        if step < 130:
            return 3.0 * 3.0 ** (step - 120)  # -> ~1.8e5
        if step < 400:
            return 1.8e5  # wrecked weights: stays huge far beyond the window
        return 3.0

    per_step = run(Detector(), [(s, {"layer.1.fc2.l2_max": norm(s)}) for s in range(420)])
    assert rules_at(per_step, 129)["norm_growth"] == "critical"
    assert rules_at(per_step, 390)["norm_growth"] == "critical"  # frozen reference: plateau still fires
    assert "norm_growth" not in rules_at(per_step, 405)


def test_norm_growth_recovery_from_a_dip_is_not_growth_but_a_new_high_after_it_is():
    # A last-layer FC2 norm at ~1e3 collapses to ~7 for a few steps and comes back (seen in
    # healthy runs): 150x above the dip, but no higher than before it.
    def norm(step: int, peak: float) -> float:
        if 200 <= step < 205:
            return 7.0
        return peak if 205 <= step < 215 else 1e3

    recovery = run(Detector(), [(s, {"layer.3.fc2.l2_max": norm(s, 1e3)}) for s in range(260)])
    assert not any(recovery)
    # The same dip followed by a climb to 1e5 (100x above the level before the dip) fires.
    new_high = run(Detector(), [(s, {"layer.3.fc2.l2_max": norm(s, 1e5)}) for s in range(215)])
    assert rules_at(new_high, 206)["norm_growth"] == "critical"
    assert "grew 100x in" in new_high[206][0].message


def test_norm_growth_ignores_the_initialisation_transient():
    # Output projections start small: a 1e4x rise in the first 40 steps is not a divergence.
    steps = [
        (s, {"layer.0.fc2.l2_mean": 0.14 * 1.3 ** min(s, 36), "layer.0.qkv.l2_mean": 3.3 * 1.1 ** min(s, 40)})
        for s in range(300)
    ]
    assert not any(run(Detector(), steps))


def test_norm_growth_burn_in_counts_from_the_first_observed_step():
    # A run resumed (or first monitored) at step 50000: the burn-in starts there.
    steps = [(50_000 + s, {"layer.0.fc2.l2_mean": 3.0 * 1.5 ** max(0, s - 120)}) for s in range(140)]
    per_step = run(Detector(), steps)
    assert not any(per_step[:120]) and rules_at(per_step, 139)["norm_growth"] == "critical"


def test_norm_growth_ignores_slow_legitimate_growth_and_unwatched_stats():
    # 30x over 3000 steps: never 10x within a window, baseline growth < 100x.
    steps = [
        (s, {"layer.0.fc1.l2_mean": 2.0 * 30 ** (s / 3000), "layer.0.fc1.rms": 1e9 * s}) for s in range(3000)
    ]
    assert not any(run(Detector(), steps))


def test_norm_growth_slow_but_huge_growth_fires_against_baseline():
    steps = [(s * 10, {"layer.0.proj.l2_mean": 1.0 * 2000 ** (s / 1000)}) for s in range(1001)]
    per_step = run(Detector(), steps)
    assert not per_step[300]
    assert rules_at(per_step, 700)["norm_growth"] == "warning"
    assert rules_at(per_step, 1000)["norm_growth"] == "critical"
    assert (
        "layer.0.proj.l2_mean grew 1.81e3x over its early baseline in 9860 steps (1.1 -> 2e3)"
        in per_step[1000][0].message
    )


def test_sparse_monitoring_every_50_steps_still_sees_growth():
    steps = [(s, {"layer.0.qkv.l2_mean": 16.0 * (4.0 ** max(0, (s - 500) / 50))}) for s in range(0, 1000, 50)]
    per_step = run(Detector(), steps)
    assert not any(per_step[:14])  # at index 13: 256 (the sustained minimum) vs 16 -> 16x, < 30x
    # The window keeps >= 4 observations (200 steps here): 1024 vs 16 -> 64x.
    assert rules_at(per_step, 14)["norm_growth"] == "warning"
    assert rules_at(per_step, 15)["norm_growth"] == "critical"  # 4096 vs the frozen 16


def test_logit_max_warning_needs_two_observations_critical_fires_at_once():
    seq = [10.0] * 10 + [400.0, 20.0, 400.0, 450.0, 500.0, 5000.0, 1.2e4, 100.0, 100.0]
    values = [(s, {"layer.0.attn.logit_max": v, "layer.1.attn.logit_max": 8.0}) for s, v in enumerate(seq)]
    per_step = run(Detector(), values)
    assert not per_step[10] and not per_step[11] and not per_step[12]
    assert rules_at(per_step, 13)["logit_max"] == "warning"
    assert rules_at(per_step, 15)["logit_max"] == "critical"
    assert (
        per_step[16][0].message == "attention logits large: attention logit max 1.2e4 in layer 0 (peak 1.2e4)"
    )
    assert not per_step[17]  # 100 is below 300 * 0.5: resolved


def test_logit_hysteresis_holds_between_clear_and_enter_thresholds():
    seq = [10.0] * 5 + [3500.0, 2000.0, 1000.0, 200.0, 140.0]
    per_step = run(Detector(), [(s, {"layer.0.attn.logit_max": v}) for s, v in enumerate(seq)])
    assert [rules_at(per_step, i).get("logit_max") for i in range(5, 10)] == [
        "critical",
        "critical",  # 2000 >= 3000 * 0.5
        "warning",  # 1000 < 1500 but >= 300
        "warning",  # 200 >= 150
        None,
    ]


def test_logit_bound_is_judged_more_leniently():
    values = [(s, {"layer.0.attn.logit_bound": 2000.0}) for s in range(10)]
    assert not any(run(Detector(), values))
    values = [(s, {"layer.0.attn.logit_bound": 4e4}) for s in range(3)]
    assert rules_at(run(Detector(), values), 0)["logit_max"] == "critical"


def test_entropy_collapse_relative_to_the_initial_entropy():
    rng = random.Random(3)

    def ent(s: int) -> float:
        if s < 50:  # healthy sharpening: 3.4 -> 1.7, a factor 2
            return noisy(rng, 3.4 - 1.7 * s / 50, 0.02)
        return 1.7 * 0.85 ** (s - 50)

    per_step = run(Detector(), [(s, {"layer.2.attn.entropy_mean": ent(s)}) for s in range(90)])
    assert not any(per_step[:55])
    first = next(i for i, fs in enumerate(per_step) if fs)
    assert rules_at(per_step, first)["entropy_collapse"] == "warning"
    assert rules_at(per_step, 89)["entropy_collapse"] == "critical"
    assert "layer 2 attention entropy" in per_step[89][0].message


def test_entropy_collapse_within_the_first_steps_is_caught():
    # The unstable tiny run: 3.2 nats at init, 0.57 at step 3, 0.01 by step 50.
    seq = [3.2, 2.7, 1.04, 0.57, 0.32, 0.21, 0.16, 0.145, 0.097, 0.072, 0.066, 0.05, 0.046]
    per_step = run(Detector(), [(s, {"layer.0.attn.entropy_mean": v}) for s, v in enumerate(seq)])
    assert not any(per_step[:6]) and rules_at(per_step, 6)["entropy_collapse"] == "warning"  # 2.7 / 0.21
    assert rules_at(per_step, 12)["entropy_collapse"] == "critical"


def test_loss_spike_that_recovers_resolves_and_only_a_sustained_one_is_critical():
    rng = random.Random(4)
    losses = [3.0 + 0.02 * rng.gauss(0, 1) for _ in range(120)]
    losses[60] = 3.5  # +17%: warning
    losses[80] = 9.0  # x3 for one step: a warning, it recovers at once
    losses[100] = losses[101] = 9.0  # x3 and still up at the next step: critical
    per_step = run(Detector(), [(s, {"loss": v}) for s, v in enumerate(losses)])
    assert rules_at(per_step, 60) == {"loss_spike": "warning"}
    assert per_step[61] == []
    assert rules_at(per_step, 80) == {"loss_spike": "warning"}
    assert per_step[81] == []
    assert rules_at(per_step, 100) == {"loss_spike": "warning"}
    assert rules_at(per_step, 101) == {"loss_spike": "critical"}
    assert [i for i, fs in enumerate(per_step) if fs] == [60, 80, 100, 101]


def test_loss_falling_fast_early_is_not_a_spike():
    per_step = run(Detector(), [(s, {"loss": 5.5 * math.exp(-s / 20) + 2.4}) for s in range(200)])
    assert not any(per_step)


def test_grad_spike_needs_sustain_for_critical():
    rng = random.Random(5)
    g = [noisy(rng, 1.0, 0.1) for _ in range(100)]
    g[50] = 40.0  # one huge spike: warning only
    g[70] = g[71] = 50.0  # sustained: critical on the second
    per_step = run(Detector(), [(s, {"grad_norm": v}) for s, v in enumerate(g)])
    assert rules_at(per_step, 50) == {"grad_spike": "warning"}
    assert rules_at(per_step, 70) == {"grad_spike": "warning"}
    assert rules_at(per_step, 71) == {"grad_spike": "critical"}
    assert per_step[72] == [] and per_step[51] == []
    assert not any(per_step[i] for i in range(100) if i not in (50, 70, 71))


@pytest.mark.parametrize("key", ["loss", "grad_norm", "layer.0.fc2.l2_mean", "layer.3.attn.logit_max"])
def test_non_finite_is_critical_at_once_and_clears_on_the_next_finite_value(key):
    det = Detector()
    state = det.new_state()
    assert det.observe(state, 0, {key: 1.0}) == []
    (f,) = det.observe(state, 1, {key: float("nan")})
    assert (f.rule, f.severity, f.step) == ("non_finite", "critical", 1)
    assert f.message == f"non-finite values: {key} is nan (since step 1)"
    assert f.evidence["series"][0]["value"] == "nan"
    (f,) = det.observe(state, 2, {key: float("inf")})
    assert f.evidence["series"][0] == {"key": key, "severity": "critical", "value": "inf", "since_step": 1}
    assert det.observe(state, 3, {key: 1.0}) == []
    assert state.rules["non_finite"] == {}


def test_non_finite_in_a_user_extra_only_warns():
    det = Detector()
    (f,) = det.observe(det.new_state(), 0, {"tokens_per_s": float("-inf")})
    assert f.severity == "warning"


def test_wire_strings_ints_and_garbage_values():
    det = Detector()
    state = det.new_state()
    (f,) = det.observe(state, 0, {"loss": "nan", "grad_norm": 1, "x": None, "y": "abc", "z": [1.0]})
    assert f.rule == "non_finite"


def test_steps_not_increasing_are_ignored():
    det = Detector()
    state = det.new_state()
    det.observe(state, 5, {"loss": 1.0})
    assert det.observe(state, 5, {"loss": float("nan")}) == []
    assert det.observe(state, 3, {"loss": float("nan")}) == []
    assert state.last_step == 5


def test_disabled_rule_and_severity_cap():
    det = Detector(
        DetectorConfig.from_overrides(
            {"non_finite": {"max_severity": "warning"}, "loss_spike.enabled": False}
        )
    )
    state = det.new_state()
    (f,) = det.observe(state, 0, {"loss": float("nan")})
    assert f.severity == "warning"
    assert "loss_spike" not in state.rules
    for s in range(1, 40):
        assert det.observe(state, s, {"loss": 3.0 if s != 30 else 30.0}) == []


def test_message_lists_at_most_message_series_and_counts_the_rest():
    det = Detector(DetectorConfig.from_overrides({"message_series": 2, "evidence_series": 3}))
    state = det.new_state()
    (f,) = det.observe(state, 0, {f"layer.{i}.fc2.l2_mean": float("nan") for i in range(6)})
    assert f.message.endswith("(+4 more series)")
    assert len(f.evidence["series"]) == 3 and f.evidence["active_series"] == 6


def test_series_per_rule_are_capped():
    det = Detector(DetectorConfig.from_overrides({"max_series_per_rule": 5}))
    state = det.new_state()
    for step in range(3):
        values = {f"layer.{i}.fc2.l2_mean": float("nan") if step == 1 else 1.0 for i in range(50)}
        det.observe(state, step, values)
        assert len(state.rules["norm_growth"]) == 5
        assert len(state.rules["non_finite"]) == (5 if step == 1 else 0)
