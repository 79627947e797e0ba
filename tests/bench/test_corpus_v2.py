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
