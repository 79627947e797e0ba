"""``stabmon backtest``: runs from real files replayed through the pure detector, first alerts with
their evidence, and the benchmark's scoring on the user's labels; the command's text and JSON."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from stabmon.backtest import backtest, parse_marks
from stabmon.history import read_history
from stabmon_cli import app


def _csv(path, n=300, nan_at=None, logits_from=None):
    lines = ["step,train/loss,layer.0.attn.logit_max"]
    for s in range(n):
        loss = math.nan if nan_at is not None and s >= nan_at else 3.0 - 0.002 * s
        logit = 20.0 if logits_from is None or s < logits_from else 20.0 * 1.2 ** (s - logits_from)
        lines.append(f"{s},{loss},{min(logit, 1e30)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def runs(tmp_path):
    return [
        _csv(tmp_path / "blowup.csv", nan_at=200, logits_from=150),
        _csv(tmp_path / "stable.csv"),
        _csv(tmp_path / "late.csv", nan_at=100),
    ]


def test_first_alerts_with_evidence_and_the_benchmark_table(runs):
    report = backtest([read_history(p) for p in runs])
    by = {r["name"]: r for r in report["runs"]}
    assert by["blowup"]["label"] == "divergence definition" and by["blowup"]["diverged_at"] == 200
    crit = by["blowup"]["first_critical"]
    assert crit["rule"] == "logit_max" and 150 < crit["step"] < 200 and crit["evidence"]["series"]
    assert by["blowup"]["lead"] == 200 - crit["step"]
    assert by["stable"]["diverged_at"] is None and by["stable"]["first_critical"] is None
    assert by["late"]["first_critical"]["rule"] == "non_finite" and by["late"]["lead"] == 0
    s = report["scores"]["stabmon critical (defaults)"]
    assert (s["positives"], s["recall_n"], s["false_alarms"]) == (2, 2, 0)
    assert "| stabmon critical (defaults) | 2/2 (100%) |" in report["table"]


def test_a_setting_and_marks_change_the_verdict(runs):
    histories = [read_history(p) for p in runs]
    silenced = backtest(histories, {"logit_max.enabled": False})
    assert {r["name"]: r["first_critical"]["rule"] for r in silenced["runs"] if r["first_critical"]} == {
        "blowup": "non_finite",
        "late": "non_finite",
    }
    assert "stabmon critical (defaults)" in silenced["scores"]  # the defaults, for comparison
    marked = backtest(histories, marks=parse_marks(["stable=120"]))
    s = marked["scores"]["stabmon critical (defaults)"]
    assert s["misses"] == ["stable"] and s["positives"] == 3
    manual = backtest(histories, marks={"blowup": 190}, auto_label=False)
    assert manual["scores"]["stabmon critical (defaults)"]["positives"] == 1
    with pytest.raises(ValueError, match="not among the paths: nope"):
        backtest(histories, marks={"nope": 3})
    with pytest.raises(ValueError, match="not a step"):
        parse_marks(["x=soon"])


def test_the_command_prints_alerts_and_table_and_json(runs, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["backtest", *map(str, runs), "--set", "logit_max.critical=5000"])
    assert r.exit_code == 0, r.output
    assert "detector: logit_max.critical=5000" in r.output
    assert "blowup (300 steps): diverged at step 200" in r.output
    assert "first critical: step" in r.output and "evidence: {" in r.output
    assert "| stabmon critical (with --set) |" in r.output and "| stabmon critical (defaults) |" in r.output
    j = runner.invoke(app, ["backtest", str(runs[0]), "--json", "--diverged", "blowup=210"])
    report = json.loads(j.stdout)
    assert report["runs"][0]["diverged_at"] == 210 and report["runs"][0]["label"] == "marked"
    bad = runner.invoke(app, ["backtest", str(runs[0]), "--set", "logit_max.nope=1"])
    assert bad.exit_code == 2 and "nope" in bad.output and "Traceback" not in bad.output
    (tmp_path / "x.csv").write_text("step,loss\n0,a\n1,1\n")
    bad = runner.invoke(app, ["backtest", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "x.csv:2: column 'loss': 'a' is not a number" in bad.output
