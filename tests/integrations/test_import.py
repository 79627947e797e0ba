"""``stabmon import`` end to end: real files (TensorBoard's writer, a CSV export) into a real
collector (``stabmon serve`` on SQLite), read back through the API: alerts at the steps the pure
detector fires offline, a second import stored once, bad input refused before anything is sent."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from typer.testing import CliRunner

from stabmon.backtest import backtest
from stabmon.detect import Detector, replay
from stabmon.history import read_history
from stabmon_cli import app
from tests._collector import Collector, read_all_series
from trainer_hooks.upload import upload

pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collector")
    c = Collector(f"sqlite:///{tmp / 'stabmon.db'}", workdir=tmp).start()
    token = (tmp / "stabmon.db.token").read_text().strip()
    yield c.url, token
    c.stop()


@pytest.fixture
def env(collector, tmp_path):
    url, token = collector
    return {"STABMON_URL": url, "STABMON_TOKEN": token, "STABMON_SPOOL_DIR": str(tmp_path / "spool")}


def _api(env, path, **params):
    r = httpx.get(
        f"{env['STABMON_URL']}/api/v1{path}",
        params=params,
        headers={"Authorization": f"Bearer {env['STABMON_TOKEN']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _diverging_logdir(path, lr=1e-3):
    """200 steps; the attention logits blow up from step 120 and the loss goes NaN at 150."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(path))
    for s in range(200):
        w.add_scalar("train/loss", math.nan if s >= 150 else 3.0 - 0.002 * s, s)
        w.add_scalar("train/grad_norm", 1.0 + 0.01 * (s % 7), s)
        w.add_scalar("lr", lr, s)
        w.add_scalar("layer.0.attn.logit_max", 20.0 if s < 120 else 20.0 * 1.2 ** (s - 120), s)
    w.close()
    return path


def test_import_alerts_where_the_detector_fires_offline_and_twice_is_once(env, tmp_path):
    logdir = _diverging_logdir(tmp_path / "old-run")
    runner = CliRunner()
    args = ["import", str(logdir), "--name", "old-run", "--config", "lr=0.001", "--json"]
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    (result,) = json.loads(first.stdout)
    assert result["complete"] and result["steps"] == 200 and result["values"] == 800
    run_id = result["run_id"]

    run = _api(env, f"/runs/{run_id}")
    assert run["name"] == "old-run" and run["config"]["lr"] == 0.001
    assert run["config"]["format"] == "tensorboard" and run["status"] == "diverged"
    assert run["summary"]["diverged_at"] == 150 and run["last_step"] == 199
    alerts = _api(env, f"/runs/{run_id}/alerts")
    # Each rule's alert opened at the step where the pure detector, fed the file offline, first
    # fires that rule (an alert keeps its first step when it escalates to critical).
    _, findings = replay(Detector(), read_history(logdir).records)
    offline: dict[str, int] = {}
    for f in findings:
        offline.setdefault(f.rule, f.step)
    online: dict[str, int] = {}
    for a in alerts:
        online[a["rule"]] = min(a["step"], online.get(a["rule"], a["step"]))
    assert online == offline and {"logit_max", "non_finite"} <= set(online)
    assert offline["logit_max"] < 150 and offline["non_finite"] == 150
    critical = backtest([read_history(logdir)])["runs"][0]["first_critical"]
    assert any(a["rule"] == critical["rule"] and a["severity"] == "critical" for a in alerts)

    again = runner.invoke(app, args, env=env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)[0]["run_id"] == run_id
    assert [r["id"] for r in _api(env, "/runs", limit=100)["items"]].count(run_id) == 1
    series = read_all_series(env["STABMON_URL"], env["STABMON_TOKEN"], run_id, ["loss", "lr"])
    assert series["loss"]["step"] == list(range(200)) and len(series["lr"]["step"]) == 200
    assert _api(env, f"/runs/{run_id}/alerts") == alerts


def test_bad_input_is_refused_before_anything_is_sent(env, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("step,loss\n0,1.0\n1,0.9\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n0,1.0\n1,x\n")
    before = _api(env, "/runs", limit=100)["total"]
    r = CliRunner().invoke(app, ["import", str(good), str(bad)], env=env)
    assert r.exit_code == 2
    assert f"error: {bad}:3: column 'loss': 'x' is not a number" in r.output
    assert "Traceback" not in r.output
    assert _api(env, "/runs", limit=100)["total"] == before


def test_dry_run_reports_and_sends_nothing(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss,loss_scale\n0,1.0,65536\n5,1.0,65536\n3,0.5,32768\n")
    r = CliRunner().invoke(app, ["import", str(path), "--dry-run"], env={"STABMON_URL": ""})
    assert r.exit_code == 0, r.output
    assert "restart at" in r.output and "went back from step 5 to 3" in r.output
    assert "kept under their own names: loss_scale" in r.output


def test_an_unreachable_collector_is_reported_not_hidden(tmp_path):
    from stabmon.net import free_port

    path = tmp_path / "log.csv"
    path.write_text("step,loss\n" + "".join(f"{s},1.0\n" for s in range(50)))
    r = upload(
        read_history(path),
        f"http://127.0.0.1:{free_port()}",
        "stm_x",
        stall_timeout_s=1.0,
        client_options={"spool_dir": tmp_path / "spool"},
    )
    assert not r.complete and r.acknowledged == 0
    assert "acknowledged no points" in r.problem and "importing the file again completes" in r.problem


def test_the_past_runs_example_script(env, tmp_path):
    """examples/past_runs.sh, as docs/integrations.md shows it, on a real TensorBoard logdir."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    logdir = _diverging_logdir(tmp_path / "llama-run", lr=3e-4)  # another run than the first test's
    script = Path(__file__).resolve().parents[2] / "examples" / "past_runs.sh"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    out = subprocess.run(
        ["bash", str(script), str(logdir)],
        env={**os.environ, **env, "PATH": path, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stored 800 values (200 steps)" in out.stdout and "status diverged" in out.stdout
    assert "detector: logit_max.critical=1000" in out.stdout
    assert "llama-run (200 steps): diverged at step 150" in out.stdout
    assert "| stabmon critical (with --set) | 1/1 (100%) |" in out.stdout
    runs = _api(env, "/runs", limit=100)["items"]
    assert any(r["name"] == "my-old-run" and r["config"]["lr"] == 0.0003 for r in runs)
