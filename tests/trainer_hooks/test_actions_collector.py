"""The closed loop through the real collector: `run_monitored` streams a diverging tiny run to a
`stabmon serve` process, the collector's detector raises the alerts, they come back in ingest
answers, the policy rolls back on the training thread, and the run is closed with its status
and the policy's summary. Also: `stop` closes the run as ``stopped``.

The rollback test waits for the collector's answer to every step before the next one (a
``flush`` in a trainer callback), so the step at which the job hears of an alert is the step
the collector raised it at, however loaded the machine: what the policy does is a function
of the run, not of how fast the collector answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests._collector import start_collector
from trainer_hooks.actions import AlertPolicy, PolicyConfig
from trainer_hooks.lab.remote import run_monitored
from trainer_hooks.lab.train import TrainConfig

pytestmark = pytest.mark.integration

DIVERGING = dict(
    variant="baseline", preset="tiny", lr=1.0, warmup=100, steps=150, grad_clip=0.0, eval_every=0
)


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    with start_collector(tmp_path_factory.mktemp("collector") / "stabmon.db", log_level="warning") as c:
        yield c


def get(collector, path: str):
    r = httpx.get(collector.url + path, headers={"Authorization": f"Bearer {collector.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_rollback_driven_by_the_collectors_alerts(collector, tmp_path):
    # Aim 10 steps before the first alert of the episode (the first warning).
    margin = 10
    policy = AlertPolicy(
        PolicyConfig(
            on_critical="rollback",
            rules=("loss_spike", "grad_spike", "non_finite"),
            checkpoint_every=10,
            rollback_margin=margin,
        )
    )

    def hear_every_answer(_info) -> None:
        # Runs before the policy's own callback at each step: this step's record is stored
        # and the collector's answer (its alerts) handed to the policy before it decides.
        assert policy.source.flush(120), f"the collector did not answer in 120 s: {policy.source.stats}"

    run = run_monitored(
        TrainConfig(**DIVERGING),
        collector=collector.url,
        token=collector.token,
        on_alert=policy,
        callbacks=[hear_every_answer],
        spool_dir=tmp_path / "spool",
        flush_interval_s=0.1,
    )
    assert run.policy.rollbacks >= 1, [a["rule"] for a in get(collector, f"/api/v1/runs/{run.run_id}/alerts")]
    # The rollback keeps the loss from blowing up. At LR 1 this tiny baseline still ends on the
    # unigram plateau, which the label calls a stall; the run is closed with the label's status.
    assert run.result.divergence_kind != "blow-up", run.result.divergence_reason
    assert run.status == ("diverged" if run.result.diverged else "finished")
    stored = get(collector, f"/api/v1/runs/{run.run_id}")
    assert stored["status"] == run.status
    summary = stored["summary"]
    assert summary["diverged"] is run.result.diverged and summary["outcome"] == run.result.outcome
    assert summary["alert_policy"]["rollbacks"] == run.policy.rollbacks
    event = summary["alert_policy"]["events"][0]
    assert event["action"] == "rollback" and event["rule"] in ("loss_spike", "grad_spike", "non_finite")
    # Back to a checkpoint from before the first warning (minus the margin), LR halved.
    assert event["to_step"] <= event["first_warning_step"] - 1 - margin
    assert event["to_step"] < event["first_warning_step"] < event["from_step"]
    assert event["lr_scale"] == 0.5
    assert stored["config"]["alert_policy"]["on_critical"] == "rollback"
    # The collector saw the halved LR: the step after the rollback re-runs trainer step
    # ``to_step`` (first seen at global step ``to_step``) at half its learning rate.
    lr = dict(zip(*[series(collector, run.run_id, "lr")[k] for k in ("step", "last")], strict=True))
    after = event["global_step"] + 1
    assert float(lr[after]) == pytest.approx(0.5 * float(lr[event["to_step"]]), rel=1e-6)
    # Steps keep counting across the rollback: the collector holds every step the job ran.
    steps_run = DIVERGING["steps"] + sum(
        e["from_step"] - e["to_step"] for e in summary["alert_policy"]["events"]
    )
    assert stored["last_step"] == steps_run - 1
    print(f"\nremote rollback: {summary['alert_policy']['events']}; final loss {run.result.final_loss:.3f}")


def series(collector, run_id: str, key: str) -> dict:
    r = httpx.get(
        f"{collector.url}/api/v1/runs/{run_id}/series",
        params={"keys": key, "max_points": 10_000},
        headers={"Authorization": f"Bearer {collector.token}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["bucket_width"] == 1, r.text
    return r.json()["series"][key]


def test_stop_closes_the_run_as_stopped(collector, tmp_path):
    run = run_monitored(
        TrainConfig(**DIVERGING),
        collector=collector.url,
        token=collector.token,
        on_alert=PolicyConfig(on_critical="stop", rules=("loss_spike", "non_finite"), stop_dir=str(tmp_path)),
        spool_dir=tmp_path / "spool",
        flush_interval_s=0.1,
    )
    assert run.status == "stopped" and run.result.stopped_by == "callback"
    assert run.result.steps_run < DIVERGING["steps"]
    stored = get(collector, f"/api/v1/runs/{run.run_id}")
    assert stored["status"] == "stopped" and stored["summary"]["alert_policy"]["stopped"] is True
    assert list(tmp_path.glob("stopped_step_*.pt"))


def test_a_policy_needs_a_collector():
    with pytest.raises(ValueError, match="needs a collector"):
        run_monitored(TrainConfig(preset="tiny", steps=1), on_alert="rollback")


def test_train_cli_on_alert_stop(collector, tmp_path):
    """`stabmon train --collector URL --token T --on-alert stop`: the job stops itself on the
    collector's critical alert and the run is closed as stopped."""
    cmd = [
        sys.executable, "-m", "stabmon_cli", "train", "--preset", "tiny", "--variant", "baseline",
        "--lr", "1.0",
        "--warmup", "100", "--steps", "400", "--grad-clip", "0", "--eval-every", "0", "--name", "cli-stop",
        "--collector", collector.url, "--token", collector.token, "--on-alert", "stop",
        "--out", str(tmp_path / "out"), "--json",
    ]  # fmt: skip
    env = {**os.environ, "STABMON_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    # 400 steps leave the collector's answer time to arrive on a loaded machine (the alert
    # comes within the first ~130); the job must stop on it, well before the end.
    assert result["stopped_by"] == "callback" and result["steps_run"] < 400, result.get("stopped_by")
    assert list((tmp_path / "out").glob("stopped_step_*.pt"))
    (run,) = [r for r in get(collector, "/api/v1/runs")["items"] if r["name"] == "cli-stop"]
    assert run["status"] == "stopped" and run["summary"]["alert_policy"]["stopped"] is True


def test_train_cli_rejects_on_alert_without_collector():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stabmon_cli",
            "train",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--on-alert",
            "stop",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "needs --collector" in proc.stderr
