"""`WandbSink` in W&B's offline mode (nothing leaves the machine), read back from the offline run's
transaction log: stabmon's series against their own x-axis, other ranks apart, NaN kept, alerts as
W&B alerts; and the whole path, a collector's critical alert arriving in W&B, with a real collector."""

from __future__ import annotations

import math

import pytest

wandb = pytest.importorskip("wandb")

from stabmon.wire import AlertPublic  # noqa: E402
from tests.integrations._wandb_log import read_offline_run  # noqa: E402
from trainer_hooks.client import Client, FanoutSink, RunInfo  # noqa: E402
from trainer_hooks.integrations.wandb import WandbSink  # noqa: E402


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    wandb.teardown()  # W&B keeps its settings per process: read this test's environment afresh
    yield tmp_path
    wandb.teardown()


def _alert(id_, severity, status="open", step=3):
    return AlertPublic(
        id=id_, run_id="r", rule="logit_max", severity=severity, status=status, step=step, last_step=step,
        message="attention logit max 3.3e3 in layer 0", created_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-01T00:00:00Z",
    )  # fmt: skip


def test_records_and_alerts_land_in_the_offline_run(offline):
    run = wandb.init(project="stabmon-test", dir=str(offline), config={"lr": 0.1})
    run.log({"train/loss": 5.0})  # the job's own logging goes on beside the sink
    sink = WandbSink()  # the current run
    sink.write({"step": 10, "rank": 0, "values": {"loss": 5.5, "layer.0.fc2.l2_mean": 3.0}})
    sink.write({"step": 11, "rank": 0, "values": {"loss": float("nan"), "layer.0.fc2.l2_mean": math.inf}})
    sink.write({"step": 11, "rank": 1, "values": {"loss": 4.0}})
    sink.alert(_alert(1, "warning"))
    sink.alert(_alert(1, "warning"))  # the same alert again: one W&B alert
    sink.alert(_alert(1, "critical"))  # escalated: a second one
    sink.alert(_alert(1, "critical", status="resolved"))  # already sent as critical
    sink.close()
    sink.write({"step": 12, "rank": 0, "values": {"loss": 1.0}})  # after close: ignored
    run.finish()

    back = read_offline_run(offline)
    rows = [r for r in back["history"] if "stabmon/step" in r]
    assert [r["stabmon/step"] for r in rows] == [10, 11, 11]
    assert rows[0]["stabmon/loss"] == 5.5 and rows[0]["stabmon/layer.0.fc2.l2_mean"] == 3.0
    assert math.isnan(rows[1]["stabmon/loss"]) and rows[1]["stabmon/layer.0.fc2.l2_mean"] == math.inf
    assert rows[2]["stabmon/rank1/loss"] == 4.0
    assert any(r.get("train/loss") == 5.0 for r in back["history"])
    assert [(a["title"], a["level"]) for a in back["alerts"]] == [
        ("stabmon: logit_max (warning)", "WARN"),
        ("stabmon: logit_max (critical)", "ERROR"),
    ]
    assert "step 3: attention logit max" in back["alerts"][0]["text"]
    assert back["config"]["lr"] == 0.1
    assert (sink.written, sink.dropped, sink.alerts_sent) == (7, 0, 2)  # 3 records, 4 alert reports


class _Broken:
    def define_metric(self, *a, **k):
        pass

    def log(self, data):
        raise RuntimeError("W&B is down")


def test_a_failing_wandb_never_reaches_training():
    sink = WandbSink(_Broken(), alerts=False)
    sink.write({"step": 0, "rank": 0, "values": {"loss": 1.0}})
    sink.alert(_alert(1, "critical"))  # alerts off: not queued
    sink.flush(timeout=5)
    sink.close()
    assert sink.written == 1 and sink.alerts_sent == 0


def test_a_collector_alert_arrives_in_wandb(offline, tmp_path):
    from tests._collector import Collector

    c = Collector(f"sqlite:///{tmp_path / 'stabmon.db'}", workdir=tmp_path).start()
    try:
        token = (tmp_path / "stabmon.db.token").read_text().strip()
        run = wandb.init(project="stabmon-test", dir=str(offline))
        client = Client(c.url, token=token, run=RunInfo(name="nan"), spool_dir=tmp_path / "spool")
        mirror = WandbSink(run, alerts_from=client)
        sink = FanoutSink(client, mirror)
        for step in range(6):
            sink.write({"step": step, "rank": 0, "values": {"loss": math.nan if step >= 4 else 3.0}})
        client.flush(timeout=30)
        sink.write({"step": 6, "rank": 0, "values": {"loss": math.nan}})  # the mirror sees the alert now
        sink.close()
        run.finish()
    finally:
        c.stop()
    alerts = read_offline_run(offline)["alerts"]
    assert [(a["title"], a["level"]) for a in alerts] == [("stabmon: non_finite (critical)", "ERROR")]
    assert alerts[0]["text"].startswith("step 4: ")


def test_the_plain_loop_example_mirrors_to_wandb(offline):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "plain_loop.py"
    spec = importlib.util.spec_from_file_location("stabmon_example_plain_loop_wandb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--steps", "3", "--data", "random", "--url", "", "--wandb", "stabmon-example"])
    rows = [r for r in read_offline_run(offline)["history"] if "stabmon/step" in r]
    assert [r["stabmon/step"] for r in rows] == [0, 1, 2]
    assert {"stabmon/loss", "stabmon/grad_norm", "stabmon/layer.0.fc2.l2_mean"} <= set(rows[0])
