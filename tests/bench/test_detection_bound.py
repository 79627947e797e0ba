"""The zero-false-alarm recall bound, on constructed runs where the answer is known."""

import math

from bench.detection_bound import bound, held_out, run_features
from bench.detection_metrics import Run, ended_on_plateau


def _run(name, records, diverged_at=None, losses=None, plateau=None, seed=0):
    n = len(records)
    return Run(
        name=name,
        variant="baseline" if name.startswith("b") else "qk_norm",
        lr=0.1,
        seed=seed,
        warmup=0,
        steps=n,
        losses=losses or [r[1]["loss"] for r in records],
        grad_norms=[1.0] * n,
        records=records,
        plateau_loss=plateau,
        diverged_at=diverged_at,
        decided_at=diverged_at,
    )


def _series(n, logit=lambda s: 5.0, loss=lambda s: 3.0, entropy=lambda s: 2.0):
    return [
        (
            s,
            {
                "loss": loss(s),
                "grad_norm": 1.0,
                "lr": 0.1,  # not a watched series: no feature
                "layer.0.attn.logit_max": logit(s),
                "layer.1.attn.logit_max": 5.0,
                "layer.0.attn.entropy_mean": entropy(s),
            },
        )
        for s in range(n)
    ]


def test_features_are_per_kind_maxima_over_layers_and_skip_unwatched_keys():
    run = _run("s", _series(30, logit=lambda s: 5.0 if s < 20 else 50.0))
    f = run_features(run, burn_in=5)
    assert "lr:level" not in f and "attn.logit_max:level" in f
    assert f["attn.logit_max:level"][25] == 50.0  # layer 0's value, the larger of the two
    assert f["attn.logit_max:base"][25] == 10.0  # 50 over the early 5
    assert f["attn.logit_max:win10"][20] == 10.0  # growth over the previous 10 steps
    # entropy is oriented so that bigger is worse: its inverse, and its drop against early on
    g = run_features(_run("e", _series(30, entropy=lambda s: 2.0 if s < 20 else 0.02)), 5)
    assert g["attn.entropy_mean:base"][25] == 100.0
    assert math.isnan(f["loss:rise"][2])  # nothing before the burn-in


def test_a_precursor_above_every_stable_value_is_caught_and_one_inside_them_is_not():
    # Diverging run "b1": its logits jump at step 20, before its divergence at 30; no stable run
    # gets there. Diverging run "q1": its only departure (logit 8) is inside what the stable run
    # "noisy" shows, so no zero-false-alarm threshold can separate it.
    stable = _run("s1", _series(60))
    noisy = _run("s2", _series(60, logit=lambda s: 9.0 if s == 40 else 5.0))
    b1 = _run("b1", _series(60, logit=lambda s: 5.0 if s < 20 else 400.0), diverged_at=30)
    q1 = _run("q1", _series(60, logit=lambda s: 8.0 if s > 20 else 5.0), diverged_at=30)
    late_precursor = _run("b2", _series(60, logit=lambda s: 400.0 if s > 35 else 5.0), diverged_at=30)
    r = bound([stable, noisy, b1, q1, late_precursor], burn_in=5)
    assert (r["diverged"], r["stable"], r["recall_bound_n"]) == (3, 2, 1)
    assert set(r["caught"]) == {"b1"} and r["missed"] == ["b2", "q1"]
    assert r["by_group"] == {"baseline": {"caught": 1, "runs": 2}, "normalised": {"caught": 0, "runs": 1}}
    # only divergences from step 31 on: none left to count
    assert bound([stable, b1], burn_in=5, min_divergence=31)["diverged"] == 0


def test_degraded_stable_runs_can_be_left_out_of_the_ceilings():
    plateau = 3.25
    ok = _run("s1", _series(60, loss=lambda s: 2.5), plateau=plateau)
    # a "stable" run that spikes its logits and ends on the plateau sets a high ceiling
    stuck = _run(
        "s2", _series(60, logit=lambda s: 1000.0 if s > 10 else 5.0, loss=lambda s: 3.2), plateau=plateau
    )
    div = _run("b1", _series(60, logit=lambda s: 500.0 if s > 10 else 5.0), diverged_at=30, plateau=plateau)
    assert ended_on_plateau(stuck) and not ended_on_plateau(ok)
    assert bound([ok, stuck, div], burn_in=5)["recall_bound_n"] == 0
    r = bound([ok, stuck, div], burn_in=5, exclude_degraded=True)
    assert r["recall_bound_n"] == 1 and r["stable"] == 1


def test_held_out_fits_thresholds_on_one_seed_and_scores_the_other():
    # seed 0's stable run tops out at logit 5; seed 1's stable run reaches 20 (a false alarm for
    # thresholds fitted on seed 0) and its diverging run reaches 400 before diverging (caught).
    runs = [
        _run("s0", _series(60), seed=0),
        _run("s1", _series(60, logit=lambda s: 20.0 if s > 30 else 5.0), seed=1),
        _run("b1", _series(60, logit=lambda s: 400.0 if s > 20 else 5.0), diverged_at=30, seed=1),
        _run("q1", _series(60), diverged_at=40, seed=1),
    ]
    r = held_out(runs, burn_in=5, fit_seed=0)
    assert (r["recall_n"], r["diverged"], r["false_alarms"], r["stable"]) == (1, 2, 1, 1)
    # fitted on seed 1 instead: seed 0 has nothing to score but one quiet stable run
    r = held_out(runs, burn_in=5, fit_seed=1)
    assert (r["diverged"], r["false_alarms"], r["stable"]) == (0, 0, 1)
