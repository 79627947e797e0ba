"""The detection benchmark's evaluation logic and reference detectors, on constructed series."""

import json
import math

import pytest

from bench.detection import calibrate, early_stop_replay, plot_timeline, table
from bench.detection_metrics import (
    FirstAlerts,
    Run,
    combine,
    load_run,
    only_rule,
    ours,
    per_rule_first,
    score,
)
from bench.reference_detectors import KillLossSpike, SpikeScore, first_alert


def _feed(det, losses, grads=None):
    return [s for s, v in enumerate(losses) if det.update(s, v, None if grads is None else grads[s])]


# --- LLM Foundry's KillLossSpike -------------------------------------------------------------


def test_kill_loss_spike_needs_more_than_patience_consecutive_outliers():
    det = KillLossSpike(window=100)
    losses = [2.0] * 100 + [5.0] * 4 + [2.0] + [5.0] * 5
    # the first burst (4 outliers) resets; the second fires at its 5th outlier
    assert _feed(det, losses) == [109]


def test_kill_loss_spike_window_holds_previous_losses_including_outliers():
    # Outliers join the window, so a steady climb raises the bar: 2x of the rising mean is never
    # met, and only the persistent-high-loss path (from step 2 * window) sees it.
    det = KillLossSpike(window=5)
    fired = _feed(det, [2.0 * 1.1**i for i in range(60)])
    assert fired[0] == 9 and "above" in det.reason and det.outliers == 0
    # No check until the window is full: an early blow-up is invisible to it.
    assert _feed(KillLossSpike(window=10), [2.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, 2.0, 2.0, 2.0]) == []


def test_kill_loss_spike_window_widens_to_five_percent_of_the_run():
    assert KillLossSpike(window=100, total_steps=4000).window_size == 200
    assert KillLossSpike(window=100, total_steps=300).window_size == 100


def test_kill_loss_spike_nan_poisons_the_mean():
    det = KillLossSpike(window=4)
    fired = _feed(det, [2.0] * 4 + [math.nan] + [100.0] * 10)
    # no spike verdict once the mean is NaN; the high-loss count still fires from step 2 * window
    assert fired[0] == 7 and det.outliers == 0 and "above" in det.reason


def test_kill_loss_spike_persistent_high_loss():
    # The default cap (10) drops to the largest loss of the first full window (3.0); from step
    # 2 * window on, half the window above it fires (losses below 2x the mean: no spike).
    det = KillLossSpike(window=4, patience=100)
    losses = [3.0, 2.9, 2.8, 2.7] + [2.5] * 2 + [3.5] * 6
    fired = _feed(det, losses)
    assert fired[0] == 8  # window [2.5, 2.5, 3.5, 3.5]: 2 of 4 above 3.0
    assert det.loss_cap == 3.0


# --- OLMo-core's spike score ---------------------------------------------------------------


def test_spike_score_six_sigma_on_loss_or_grad_norm():
    base = [1.0, 1.1] * 10
    assert _feed(SpikeScore(window=10), base + [1.2, 5.0]) == [21]
    assert _feed(SpikeScore(window=10), base + [1.2, 1.3]) == []
    grads = [0.5, 0.6] * 10 + [0.55, 9.0]
    assert _feed(SpikeScore(window=10), base + [1.05, 1.05], grads) == [21]


def test_spike_score_needs_a_full_window_and_some_spread():
    assert _feed(SpikeScore(window=10), [1.0] * 5 + [100.0]) == []
    assert _feed(SpikeScore(window=10), [1.0] * 20 + [100.0]) == []  # std 0: no verdict
    assert _feed(SpikeScore(window=4), [1.0, 1.1, 1.0, 1.1, math.nan, 100.0, 100.0]) == []


def test_first_alert_reports_step_and_reason():
    a = first_alert(SpikeScore(window=10), [1.0, 1.1] * 10 + [9.0], [1.0] * 21)
    assert a.step == 20 and "loss" in a.reason
    assert first_alert(KillLossSpike(window=10), [2.0] * 30, [1.0] * 30) is None
    with pytest.raises(ValueError):
        SpikeScore(window=1)
    with pytest.raises(ValueError):
        KillLossSpike(multiplier=0)


# --- scoring -------------------------------------------------------------------------------


def _run(name, diverged_at=None, decided_at=None, steps=100, seed=0, records=(), variant="v", lr=0.1):
    return Run(
        name=name,
        variant=variant,
        lr=lr,
        seed=seed,
        warmup=10,
        steps=steps,
        losses=[3.0] * steps,
        grad_norms=[1.0] * steps,
        records=list(records),
        diverged_at=diverged_at,
        decided_at=decided_at if decided_at is not None else diverged_at,
    )


def test_score_recall_false_alarms_and_lead_times():
    runs = [
        _run("early", 50, 80),  # alerted 20 steps ahead
        _run("same", 40, 45),  # alerted at the divergence step: counts, lead 0
        _run("late", 30, 60),  # alerted after divergence but before the definition decided
        _run("never", 20, 40),
        _run("quiet"),
        _run("noisy"),
    ]
    first = {"early": 30, "same": 40, "late": 50, "never": None, "quiet": None, "noisy": 7}
    s = score(runs, first)
    assert (s["positives"], s["negatives"]) == (4, 2)
    assert s["recall"] == 0.5 and s["recall_n"] == 2
    assert s["recall_before_decidable"] == 0.75
    assert s["false_alarms"] == 1 and s["false_alarm_runs"] == ["noisy"]
    assert s["misses"] == ["late", "never"]
    assert s["lead_median"] == 0  # leads 20, 0, -20
    assert s["lead_p10"] == pytest.approx(-16.0)
    assert s["lead_frac_median"] == 0
    assert score([_run("quiet")], {"quiet": None})["recall"] is None


def test_transient_runs_are_neither_false_alarms_nor_catches():
    """A run that worked an excursion off: an alert on it is noted apart; an undetermined run
    counts nowhere."""
    runs = [_run("div", 50, 150), _run("quiet"), _run("bump"), _run("cut")]
    runs[2].outcome, runs[3].outcome = "transient", "undetermined"
    s = score(runs, {"div": 40, "quiet": None, "bump": 12, "cut": 30})
    assert (s["positives"], s["negatives"], s["false_alarms"]) == (1, 1, 0)
    assert (s["transient"], s["transient_alerted"], s["undetermined"]) == (1, 1, 1)
    assert s["recall_n"] == 1


def _records(n, logit_jump_at=None, loss_nan_at=None):
    out = []
    for s in range(n):
        v = {"loss": 3.0 - 0.001 * s, "grad_norm": 1.0, "layer.0.attn.logit_max": 10.0}
        if logit_jump_at is not None and s >= logit_jump_at:
            v["layer.0.attn.logit_max"] = 5000.0
        if loss_nan_at is not None and s == loss_nan_at:
            v["loss"] = math.nan
        out.append((s, v))
    return out


def test_ours_streams_records_and_rules_combine_exactly():
    runs = [
        _run("logit", 40, records=_records(60, logit_jump_at=25)),
        _run("nan", 30, records=_records(60, loss_nan_at=30)),
        _run("calm", records=_records(60)),
    ]
    full = ours(runs)
    assert full.critical == {"logit": 25, "nan": 30, "calm": None}
    assert full.critical_rule == {"logit": "logit_max", "nan": "non_finite", "calm": None}
    parts = [
        per_rule_first(runs, rule) for rule in ("non_finite", "logit_max", "loss_spike", "entropy_collapse")
    ]
    assert combine(parts).critical == full.critical
    assert combine(parts).critical_rule == full.critical_rule
    with pytest.raises(ValueError, match="unknown rule"):
        only_rule("nope")


def test_combine_takes_the_earliest_rule():
    a = FirstAlerts({"r": 10, "s": None}, {"r": 5, "s": 3}, {"r": "a", "s": None})
    b = FirstAlerts({"r": 8, "s": None}, {"r": 8, "s": None}, {"r": "b", "s": None})
    c = combine([a, b])
    assert c.critical == {"r": 8, "s": None} and c.critical_rule == {"r": "b", "s": None}
    assert c.warning == {"r": 5, "s": 3}


def test_calibrate_prefers_no_false_alarms_then_recall():
    runs = [_run("div", 50), _run("stable")]
    strict = FirstAlerts({"div": 20, "stable": 30}, {"div": 20, "stable": 30}, {"div": "x", "stable": "x"})
    loose = FirstAlerts(
        {"div": 45, "stable": None}, {"div": 45, "stable": None}, {"div": "x", "stable": None}
    )
    never = FirstAlerts(
        {"div": None, "stable": None}, {"div": None, "stable": None}, {"div": None, "stable": None}
    )
    chosen, s = calibrate(
        runs,
        {"logit_max": [({"critical": 1.0}, strict), ({"critical": 2.0}, loose), ({"critical": 3.0}, never)]},
    )
    assert chosen == {"logit_max": {"critical": 2.0}}
    assert s["false_alarms"] == 0 and s["recall"] == 1.0 and s["lead_median"] == 5


def test_early_stop_replay_counts_saved_steps_and_changed_conclusions():
    runs = [
        _run("a-lo", variant="a", lr=0.1),
        _run("a-hi", 50, variant="a", lr=1.0),
        _run("b-lo", variant="b", lr=0.1),
        _run("b-hi", variant="b", lr=1.0),  # stopped although it never diverges
    ]
    r = early_stop_replay(runs, {"a-lo": None, "a-hi": 39, "b-lo": None, "b-hi": 9})
    assert r["steps_full"] == 400 and r["steps_with_early_stop"] == 100 + 40 + 100 + 10
    assert r["saved_fraction"] == pytest.approx(1 - 250 / 400)
    assert r["runs_stopped"] == 2 and r["stopped_diverged"] == 1
    assert [x["name"] for x in r["stopped_not_diverged"]] == ["b-hi"]
    assert r["max_stable_lr_full"] == {"a": 0.1, "b": 1.0}
    assert r["max_stable_lr_early_stop"] == {"a": 0.1, "b": 0.1}


def test_table_and_timeline(tmp_path):
    runs = [_run("div", 50), _run("stable")]
    s = score(runs, {"div": 40, "stable": None})
    md = table({"mine": s})
    assert "| mine | 1/1 (100%) |" in md and "0/1" in md
    path = plot_timeline(runs, {"mine": {"div": 40, "stable": None}}, tmp_path / "t.png")
    assert path.stat().st_size > 1000


def test_load_run_labels_from_the_full_loss(tmp_path):
    losses = [5.5, 4.0, 3.0, 2.8] + ["nan"] + [2.7] * 3
    detail = {
        "name": "x", "variant": "baseline", "lr": 1.0, "seed": 0, "warmup": 0, "steps": 8,
        "losses": losses, "grad_norms": [1.0] * 8, "plateau_loss": None, "final_loss": 2.7, "val_loss": None,
    }  # fmt: skip
    (tmp_path / "x.json").write_text(json.dumps(detail))
    with open(tmp_path / "x.jsonl", "w") as f:
        for s, v in enumerate(losses):
            f.write(json.dumps({"step": s, "rank": 0, "values": {"loss": v}}) + "\n")
    run = load_run(tmp_path / "x.json")
    assert run.diverged_at == 4 and run.decided_at == 4 and "non-finite" in run.reason
    assert (run.outcome, run.kind) == ("diverged", "early")
    assert math.isnan(run.records[4][1]["loss"]) and math.isnan(run.losses[4])


def test_outcome_view_is_the_final_loss_against_the_plateau():
    from bench.detection import ended_on_plateau, outcome_score

    stuck = _run("stuck")  # losses 3.0 throughout
    stuck.plateau_loss = 3.2  # lower edge 2.95: 3.0 is on it
    good = _run("good")
    good.plateau_loss, good.losses = 3.2, [2.5] * 100
    blown = _run("blown")
    blown.plateau_loss, blown.losses = 3.2, [2.5] * 99 + [math.nan]
    unknown = _run("unknown")  # no plateau: never counted as failed
    assert [ended_on_plateau(r) for r in (stuck, good, blown, unknown)] == [True, False, True, False]
    o = outcome_score([stuck, good, blown, unknown], {"stuck": 5, "good": 9, "blown": None, "unknown": None})
    assert o == {"ended_on_plateau": 2, "alerted_of_those": 1, "ended_below": 2, "alerted_of_those_below": 1}
