"""The examples, run as a user runs them, against a real collector (``stabmon serve`` on SQLite).

Each example's ``main(argv)`` runs in this process (the frameworks are imported once for the
whole module) with ``$STABMON_URL``/``$STABMON_TOKEN`` set, and the test reads the run back
through the collector's API: registered with its config, every step's series stored, status
``finished``. A last test closes the loop: a Hugging Face run whose loss turns NaN gets a
critical alert from the collector's detector and stops itself, checkpoint first.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
import torch

from tests._collector import start_collector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    """A real collector process; yields ``(url, token)``."""
    tmp = tmp_path_factory.mktemp("collector")
    with start_collector(tmp / "stabmon.db", timeout=120, workdir=ROOT, log_dir=tmp) as c:
        yield c.url, c.token


@pytest.fixture
def api(collector, monkeypatch, tmp_path):
    url, token = collector
    monkeypatch.setenv("STABMON_URL", url)
    monkeypatch.setenv("STABMON_TOKEN", token)
    monkeypatch.setenv("STABMON_SPOOL_DIR", str(tmp_path / "spool"))
    with httpx.Client(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        yield c


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"stabmon_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _new_run(api: httpx.Client, before: set[str]) -> dict:
    runs = [r for r in api.get("/runs", params={"limit": 100}).json()["items"] if r["id"] not in before]
    assert len(runs) == 1, runs
    return runs[0]


def _run_ids(api: httpx.Client) -> set[str]:
    return {r["id"] for r in api.get("/runs", params={"limit": 100}).json()["items"]}


@pytest.mark.parametrize(
    ("example", "argv", "steps", "config_key"),
    [
        ("plain_loop", ["--steps", "5", "--data", "random"], [0, 1, 2, 3, 4], "variant"),
        (
            "hf_trainer",
            ["--steps", "4", "--data", "random", "--arch", "llama"],
            [1, 2, 3, 4],
            "learning_rate",
        ),
        ("lightning_module", ["--steps", "4", "--data", "random"], [1, 2, 3, 4], "variant"),
    ],
)
def test_example_streams_every_step_to_the_collector(api, tmp_path, example, argv, steps, config_key):
    if example == "hf_trainer":
        pytest.importorskip("accelerate", reason="the Hugging Face Trainer needs accelerate")
    before = _run_ids(api)
    if example == "plain_loop":
        argv = [*argv, "--tensorboard", str(tmp_path / "tb")]
    else:
        argv = [*argv, "--output-dir", str(tmp_path / "out")]
    _load(example).main(argv)

    run = _new_run(api, before)
    assert run["status"] == "finished" and run["last_step"] == steps[-1]
    assert config_key in run["config"] and "lr" in run["config"]
    keys = {k["key"] for k in api.get(f"/runs/{run['id']}/keys").json()["keys"]}
    assert {"loss", "lr", "grad_norm", "layer.0.fc2.l2_mean", "layer.1.proj.l2_max"} <= keys
    assert any(k.startswith("layer.0.attn.logit_") for k in keys)
    series = api.get(f"/runs/{run['id']}/series", params={"keys": "loss,layer.1.fc1.l2_mean"}).json()[
        "series"
    ]
    assert series["loss"]["step"] == steps and series["layer.1.fc1.l2_mean"]["step"] == steps
    assert all(4.0 < v < 7.0 for v in series["loss"]["last"])  # ln(256) = 5.5 at init
    if example == "plain_loop":  # the TensorBoard mirror got the same series
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        board = EventAccumulator(str(tmp_path / "tb"))
        board.Reload()
        assert [e.step for e in board.Scalars("loss")] == steps
        assert [e.value for e in board.Scalars("loss")] == pytest.approx(series["loss"]["last"], rel=1e-6)


class _PoisonAt:
    """A Trainer callback that makes the loss NaN from ``step`` on (a diverged run, on demand)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_hf_run_stops_on_a_real_critical_alert(api, tmp_path):
    pytest.importorskip("accelerate", reason="the Hugging Face Trainer needs accelerate")
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from tests.integrations._tiny import RandomBytes, tiny_gpt2
    from trainer_hooks.integrations.hf import StabmonCallback

    poison = type("Poison", (TrainerCallback,), {"on_step_end": _PoisonAt(3)})()
    callback = StabmonCallback(on_alert="stop", run_name="nan-run", client_options={"flush_interval_s": 0.05})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        max_steps=2000,
        per_device_train_batch_size=2,
        save_strategy="no",
        disable_tqdm=True,
    )
    before = _run_ids(api)
    trainer = Trainer(
        model=tiny_gpt2(), args=args, train_dataset=RandomBytes(4000), callbacks=[poison, callback]
    )
    trainer.train()

    stopped = trainer.state.global_step
    assert callback.stopped_at == stopped and 4 <= stopped < 2000
    assert (tmp_path / "out" / f"checkpoint-{stopped}").is_dir()
    run = _new_run(api, before)
    assert run["name"] == "nan-run" and run["status"] == "stopped"
    assert run["summary"]["stopped_at"] == stopped
    alerts = api.get(f"/runs/{run['id']}/alerts").json()
    critical = [a for a in alerts if a["severity"] == "critical"]
    assert critical and min(a["step"] for a in critical) >= 4
