"""`StabmonCallback` in a real ``transformers.Trainer``: tiny GPT-2 and Llama on CPU, a few steps."""

from __future__ import annotations

import json
import logging

import pytest
import torch

pytest.importorskip("accelerate", reason="the Trainer needs accelerate")
from transformers import Trainer, TrainerState, TrainingArguments  # noqa: E402

from tests.integrations._tiny import AlertingSink, RandomBytes, tiny_gpt2, tiny_llama  # noqa: E402
from trainer_hooks.client import MemorySink  # noqa: E402
from trainer_hooks.integrations import session  # noqa: E402
from trainer_hooks.integrations.hf import StabmonCallback, training_config  # noqa: E402


def _args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _train(model, args, callback, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        model=model, args=args, train_dataset=RandomBytes(), callbacks=[callback], **trainer_kwargs
    )
    trainer.train()
    return trainer


def _hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    ("build", "attn_key"), [(tiny_gpt2, "layer.1.attn.logit_max"), (tiny_llama, "layer.1.attn.logit_bound")]
)
def test_one_record_per_optimizer_step_with_the_trainers_numbers(tmp_path, build, attn_key):
    model = build()
    sink = MemorySink()
    args = _args(tmp_path, eval_strategy="steps", eval_steps=2)
    trainer = _train(model, args, StabmonCallback(sink=sink), eval_dataset=RandomBytes(8, seed=1))

    # Gradient accumulation 2: four optimizer steps, four records, numbered like the Trainer's logs.
    assert [r["step"] for r in sink.records] == [1, 2, 3, 4]
    logged = {h["step"]: h for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h}
    assert sorted(logged) == [1, 2, 3, 4]
    for record in sink.records:
        values, log = record["values"], logged[record["step"]]
        # logging_steps=1: the Trainer's loss is this step's loss; evaluation forwards are not counted.
        assert values["loss"] == pytest.approx(log["loss"], rel=1e-5)
        assert values["grad_norm"] == pytest.approx(log["grad_norm"], rel=1e-5)
        assert values["lr"] == pytest.approx(log["learning_rate"], rel=1e-6)
        assert values[attn_key] > 0 and values["layer.0.fc2.l2_mean"] > 0
    assert _hooks_left(model) == 0


def test_every_n_steps_and_the_trainers_pre_clip_norm(tmp_path):
    model = tiny_gpt2()
    sink = MemorySink()
    # Clipping at 1e-3 always bites: only the Trainer's log knows the unclipped norm.
    args = _args(tmp_path, max_steps=6, logging_steps=3, max_grad_norm=1e-3)
    trainer = _train(model, args, StabmonCallback(sink=sink, every=2))

    assert [r["step"] for r in sink.records] == [2, 4, 6]
    logged = {h["step"]: h for h in trainer.state.log_history if "grad_norm" in h}
    assert sorted(logged) == [3, 6]
    assert sink.records[2]["values"]["grad_norm"] == pytest.approx(logged[6]["grad_norm"], rel=1e-5)
    assert logged[6]["grad_norm"] > 1e-2  # far above the clip: the record did not get the clipped norm
    # Steps the Trainer does not log carry the norm the optimizer applied (clipped).
    assert sink.records[0]["values"]["grad_norm"] == pytest.approx(1e-3, rel=1e-3)
    assert all(len(r["values"]) > 10 for r in sink.records)


def test_stop_on_alert_saves_a_checkpoint_and_stops(tmp_path):
    model = tiny_gpt2()
    sink = AlertingSink(alert_at=2)
    callback = StabmonCallback(sink=sink, on_alert="stop")
    sink.on_alert = callback.alerts  # the client would call this from its sender thread
    trainer = _train(model, _args(tmp_path, max_steps=20, gradient_accumulation_steps=1), callback)

    assert sink.delivered.is_set()
    stopped = trainer.state.global_step
    # The alert for step 2 arrives while step 3 runs; the Trainer stops at that step's end.
    assert stopped in (2, 3) and callback.stopped_at == stopped
    assert (tmp_path / "out" / f"checkpoint-{stopped}" / "model.safetensors").exists()
    assert "step 2" in callback.alerts.reason
    assert max(r["step"] for r in sink.records) == stopped
    assert _hooks_left(model) == 0

    # The same callback in a new run starts without the old stop request.
    sink.alert_at = -1
    again = _train(tiny_gpt2(), _args(tmp_path, max_steps=5, gradient_accumulation_steps=1), callback)
    assert again.state.global_step == 5 and callback.stopped_at is None


def test_log_mode_keeps_training(tmp_path, caplog):
    sink = AlertingSink(alert_at=1)
    callback = StabmonCallback(sink=sink, on_alert="log")
    sink.on_alert = callback.alerts
    with caplog.at_level(logging.WARNING, logger="stabmon.integrations"):
        trainer = _train(tiny_gpt2(), _args(tmp_path, gradient_accumulation_steps=1), callback)
    assert trainer.state.global_step == 4 and callback.stopped_at is None
    assert "loss_non_finite at step 1" in caplog.text


def test_training_config_is_json_safe_training_arguments(tmp_path):
    model = tiny_llama()
    config = training_config(_args(tmp_path, learning_rate=3e-4), model)
    json.dumps(config, allow_nan=False)
    assert config["learning_rate"] == config["lr"] == 3e-4
    assert config["gradient_accumulation_steps"] == 2 and config["framework"] == "transformers"
    assert config["model"]["num_hidden_layers"] == 2
    assert config["n_params"] == sum(p.numel() for p in model.parameters())


def test_a_failure_inside_the_callback_never_stops_training(tmp_path, monkeypatch, caplog):
    def broken(parameters):
        raise RuntimeError("boom")

    monkeypatch.setattr(session, "grad_norm", broken)
    sink = MemorySink()
    with caplog.at_level(logging.ERROR, logger="stabmon.integrations"):
        trainer = _train(tiny_gpt2(), _args(tmp_path), StabmonCallback(sink=sink))
    assert trainer.state.global_step == 4
    assert "monitoring is off" in caplog.text


def test_unknown_architecture_fails_at_train_begin_with_a_hint(tmp_path):
    callback = StabmonCallback(sink=MemorySink())
    args = _args(tmp_path)
    with pytest.raises(ValueError, match="sites"):
        callback.on_train_begin(args, TrainerState(), None, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="every"):
        StabmonCallback(every=0)
    with pytest.raises(ValueError, match="on_alert"):
        StabmonCallback(on_alert="explode")
    with pytest.raises(TypeError, match="evry"):
        StabmonCallback(evry=2)
    with pytest.raises(ValueError, match="FanoutSink"):
        StabmonCallback("http://127.0.0.1:9", sink=MemorySink())
