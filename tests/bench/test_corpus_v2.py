"""Corpus v2: the Wilson bound, leads from an incident's step, the grid, and a tiny end-to-end build."""

import json
import math
from dataclasses import dataclass

import pytest

from bench.detection_metrics import Run
from stabmon.scoring import lead_reference, score, wilson_lower


def test_wilson_lower_bound_known_values():
    assert wilson_lower(0, 0) is None
    assert wilson_lower(0, 10) == 0.0
    assert math.isclose(wilson_lower(10, 10), 0.7225, abs_tol=1e-4)
    assert math.isclose(wilson_lower(5, 10), 0.2366, abs_tol=1e-4)
    assert math.isclose(wilson_lower(60, 60), 0.9398, abs_tol=1e-4)
    # more evidence for the same proportion raises the bound; it never exceeds the proportion
    assert wilson_lower(8, 10) < wilson_lower(80, 100) < 0.8
    with pytest.raises(ValueError):
        wilson_lower(11, 10)


@dataclass
class _R:
    name: str
    diverged_at: int | None
    decided_at: int | None
    lead_from: int | None = None


def test_score_measures_lead_from_the_incident_step_when_given():
    runs = [_R("a", 160, 260, lead_from=150), _R("b", 160, 260), _R("c", None, None)]
    assert lead_reference(runs[0]) == 150 and lead_reference(runs[1]) == 160
    s = score(runs, {"a": 155, "b": 155, "c": None})
    # a: alerted 5 steps after its incident (lead -5, a miss); b: 5 steps before its onset
    assert s["recall_n"] == 1 and s["misses"] == ["a"]
    assert s["lead_median"] == 0 and s["lead_p10"] == pytest.approx(-4.0)
    # runs without lead_from score exactly as before
    plain = score([_R("b", 160, 260), _R("c", None, None)], {"b": 155, "c": None})
    assert plain["recall_n"] == 1 and plain["lead_median"] == 5


def test_run_reads_mechanism_and_incident_step(tmp_path):
    from bench.detection_metrics import load_run

    d = {"name": "x", "variant": "baseline", "lr": 0.03, "seed": 0, "warmup": 3, "steps": 40,
         "losses": [3.0] * 40, "grad_norms": [1.0] * 40, "mechanism": "lr-spike", "incident_step": 20,
         "control_of": []}  # fmt: skip
    (tmp_path / "x.json").write_text(json.dumps(d))
    (tmp_path / "x.jsonl").write_text("")
    run = load_run(tmp_path / "x.json")
    assert (run.mechanism, run.incident_step, run.lead_from, run.control_of) == ("lr-spike", 20, 20, ())
    old = Run("y", "baseline", 0.1, 0, 3, 40, [3.0] * 40, [1.0] * 40, [])
    assert old.mechanism is None and old.lead_from is None


def test_grid_gives_every_mechanism_matched_controls_and_three_seeds():
    from bench.corpus_v2 import CONTROL, MECHANISMS, grid

    for preset in ("tiny", "small"):
        cells = grid(preset)
        names = [c.name for c in cells]
        assert len(names) == len(set(names))
        controls = [c for c in cells if c.mechanism == CONTROL]
        for mech in MECHANISMS:
            treated = [c for c in cells if c.mechanism == mech]
            assert len({c.seed for c in treated}) >= 3, (preset, mech)
            matched = [c for c in controls if mech in c.control_of]
            assert matched, (preset, mech)
            for c in treated:  # a control at the same schedule, variant and seed
                assert any((m.steps, m.warmup, m.variant, m.seed) == (c.steps, c.warmup, c.variant, c.seed)
                           for m in matched)  # fmt: skip
        assert all(c.incident_step is None and c.control_of for c in controls)
        for c in cells:
            if c.mechanism in ("lr-spike", "corrupt-random", "corrupt-repeat", "grad-scale", "beta2-switch"):
                assert c.incident_step is not None and 50 <= c.incident_step < c.steps - 100
                assert any(m.lr == c.lr for m in controls if c.mechanism in m.control_of)
    # one shared control per (variant, seed) for the four incidents, not four copies
    shared = [c for c in grid("tiny", seeds=(0,)) if "lr-spike" in c.control_of]
    assert len(shared) == 1 and set(shared[0].control_of) == {
        "lr-spike", "corrupt-random", "corrupt-repeat", "grad-scale"
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown mechanisms"):
        grid("tiny", mechanisms=["nope"])


@pytest.mark.slow
def test_tiny_v2_corpus_builds_resumes_and_scores_end_to_end(tmp_path, capsys):
    """A handful of tiny runs (an LR spike x100 and x30 with their shared control, one seed)."""
    from bench.corpus_v2_score import main

    argv = [
        "--root",
        str(tmp_path),
        "--preset",
        "tiny",
        "--seeds",
        "0",
        "--mechanisms",
        "lr-spike",
        "--jobs",
        "2",
    ]
    result = main(argv)
    out = tmp_path / "v2" / "tiny"
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(runs) == 3 and result["runs"] == 3
    by_name = {r["name"]: r for r in result["per_run"]}
    spike = by_name["lr-spike-baseline-lr0.03-n300w30-lr_spike150-x100-3-s0"]
    assert spike["mechanism"] == "lr-spike" and spike["incident_step"] == 150
    assert spike["outcome"] == "diverged" and spike["onset"] >= spike["incident_step"]
    control = by_name["control-baseline-lr0.03-n300w30-s0"]
    assert control["incident_step"] is None and control["outcome"] != "diverged"
    detail = json.loads((out / "runs" / "control-baseline-lr0.03-n300w30-s0.json").read_text())
    assert set(detail["control_of"]) == {"lr-spike"} and detail["mechanism"] == "control"
    (row,) = result["by_mechanism"]
    assert row["mechanism"] == "lr-spike" and row["runs"] == 2 and row["controls"] == 1
    assert 0 <= (row["before_decision_wilson95"] or 0) <= row["before_decision"] / max(row["diverged"], 1)
    labels = json.loads((out / "labels.json").read_text())
    (build,) = labels["builds"]
    assert build["machine"]["torch"] and build["machine"]["cpu_count"] and len(build["trained"]) == 3
    assert labels["labels"][spike["name"]]["outcome"] == "diverged"
    md = (out / "detection_v2.md").read_text()
    assert "| lr-spike |" in md and "95% lower bound" in md
    # resumable: a rerun trains nothing and scores the same
    mtimes = {p: p.stat().st_mtime for p in (out / "runs").glob("*.json")}
    again = main(argv)
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*.json")} == mtimes
    assert again["per_run"] == result["per_run"]
    builds = json.loads((out / "labels.json").read_text())["builds"]
    assert len(builds) == 2 and builds[1]["trained"] == []


def test_gpu_detection_help_and_refusal_without_cuda(tmp_path, capsys):
    import torch

    from bench import gpu_detection

    with pytest.raises(SystemExit) as exit_help:
        gpu_detection.main(["--help"])
    assert exit_help.value.code == 0 and "--budget-s" in capsys.readouterr().out
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is for machines without one")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_detection.main([str(tmp_path / "gpu")])
    assert not (tmp_path / "gpu").exists()
    spec = gpu_detection.gpu_spec(1000)
    assert spec.steps >= 1000 and 50 <= spec.at < spec.steps - 100


def _run(name, mechanism, outcome, onset=None, decided=None, incident=None, control_of=()):
    return Run(name, "baseline", 0.03, 0, 30, 300, [3.0] * 300, [1.0] * 300, [], diverged_at=onset,
               decided_at=decided, outcome=outcome, mechanism=mechanism, incident_step=incident,
               control_of=control_of)  # fmt: skip


def test_mechanism_row_scores_treated_runs_against_their_matched_stable_controls():
    from bench.corpus_v2_score import lr_range_markdown, mechanism_markdown, mechanism_table

    runs = [
        _run("a", "lr-spike", "diverged", 151, 251, incident=150),  # alerted 2 steps after
        _run("b", "lr-spike", "diverged", 150, 250, incident=150),  # alerted at the incident
        _run("c", "lr-spike", "diverged", 160, 260, incident=150),  # alerted after the decision
        _run("d", "lr-spike", "transient", incident=150),
        _run("e", "lr-spike", "stable", incident=150),  # absorbed: not a negative
        _run("k1", "control", "stable", control_of=("lr-spike", "grad-scale")),
        _run("k2", "control", "stable", control_of=("lr-spike",)),
        _run("k3", "control", "undetermined", control_of=("lr-spike",)),
        _run("x", "edge-baseline", "diverged", 20, 120),
        _run("k4", "control", "stable", control_of=("edge-baseline",)),
    ]
    first = {
        "a": 152,
        "b": 150,
        "c": 300,
        "d": 155,
        "e": 151,
        "k1": 40,
        "k2": None,
        "k3": 10,
        "x": 5,
        "k4": None,
    }
    rows = {r["mechanism"]: r for r in mechanism_table(runs, first)}
    assert list(rows) == ["edge-baseline", "lr-spike"]  # in MECHANISMS order, only those present
    spike = rows["lr-spike"]
    assert (spike["runs"], spike["diverged"], spike["diverged_onset_ge_min"]) == (5, 3, 3)
    assert spike["before_decision"] == 2 and spike["alert_le_start"] == 1
    assert spike["before_decision_wilson95"] == pytest.approx(wilson_lower(2, 3))
    assert spike["lead_median"] == -2  # leads from the incident: -2, 0, -150
    assert (spike["controls"], spike["controls_stable"], spike["false_alarms"]) == (3, 2, 1)
    assert spike["false_alarms_per_50"] == 25.0
    assert (spike["transient"], spike["transient_alerted"], spike["absorbed"]) == (1, 1, 1)
    edge = rows["edge-baseline"]
    assert edge["diverged_onset_ge_min"] == 0 and edge["lead_median"] == 15 and edge["false_alarms"] == 0
    md = mechanism_markdown(list(rows.values()))
    assert "| lr-spike | 5 | 3 (3) | 2/3 (67%) |" in md and "| 1/2 (25.0) |" in md
    lr_range = [
        _run("r1", None, "diverged", 40, 140),
        _run("r2", None, "diverged", 40, 140),
        _run("r3", None, "stable"),
    ]
    assert "| stabmon (defaults) | 2 | 1/2 (50%) |" in lr_range_markdown(
        lr_range, {"r1": 100, "r2": 150, "r3": 1}
    )
