"""`StabmonCallback` in a real Lightning ``Trainer``: a tiny stabmon GPT in a LightningModule, on CPU."""

from __future__ import annotations

import json

import pytest
import torch

L = pytest.importorskip("lightning")

from tests.integrations._tiny import AlertingSink  # noqa: E402
from trainer_hooks.client import MemorySink  # noqa: E402
from trainer_hooks.integrations.lightning import StabmonCallback, lightning_config  # noqa: E402
from trainer_hooks.lab.config import GPTConfig  # noqa: E402
from trainer_hooks.lab.model import GPT  # noqa: E402


class LitGPT(L.LightningModule):
    def __init__(self, lr: float = 1e-3, variant: str = "baseline") -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=4, n_embd=32, variant=variant))
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, T)
        _, loss = self.model(x, y)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.model(x, y)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def _loader(n: int = 64, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 256, (n, 33), generator=g)  # (n, T+1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xy[:, :-1], xy[:, 1:]), batch_size=4)


def _fit(module, callback, tmp_path, val_loader=None, **trainer_kwargs):
    kwargs = dict(
        max_steps=4,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    kwargs.update(trainer_kwargs)
    trainer = L.Trainer(**kwargs)
    trainer.fit(module, _loader(), val_loader)
    return trainer


def _hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_one_record_per_optimizer_step_with_mean_loss_and_unclipped_norm(tmp_path):
    module = LitGPT(variant="qk_norm")
    sink = MemorySink()
    _fit(
        module,
        StabmonCallback(sink=sink),
        tmp_path,
        val_loader=_loader(8, seed=1),
        accumulate_grad_batches=2,
        gradient_clip_val=1e-3,
        val_check_interval=2,
        limit_val_batches=2,
    )

    assert [r["step"] for r in sink.records] == [1, 2, 3, 4]
    # Each record's loss is the mean of its two micro-batches; validation forwards are not counted.
    micro = module.losses
    assert len(micro) == 8
    for record, (a, b) in zip(sink.records, zip(micro[::2], micro[1::2], strict=True), strict=True):
        values = record["values"]
        assert values["loss"] == pytest.approx((a + b) / 2, rel=1e-5)
        assert values["lr"] == pytest.approx(1e-3)
        assert values["grad_norm"] > 1e-2  # taken before Lightning clipped to 1e-3
        assert values["layer.1.attn.logit_max"] > 0 and values["layer.1.attn.entropy_mean"] > 0
        assert values["layer.0.qkv.l2_mean"] > 0
    assert _hooks_left(module) == 0
    assert module.model.blocks[0].attn.record_attention is False


def test_every_n_steps(tmp_path):
    sink = MemorySink()
    _fit(LitGPT(), StabmonCallback(sink=sink, every=2), tmp_path, max_steps=6)
    assert [r["step"] for r in sink.records] == [2, 4, 6]
    assert all("loss" in r["values"] and "layer.0.fc2.l2_max" in r["values"] for r in sink.records)


def test_stop_on_alert_saves_a_checkpoint_and_stops(tmp_path):
    module = LitGPT()
    sink = AlertingSink(alert_at=2)
    callback = StabmonCallback(sink=sink, on_alert="stop")
    sink.on_alert = callback.alerts
    trainer = _fit(module, callback, tmp_path, max_steps=20)

    # The record of step 2 is written at the end of step 2 and the alert comes back at once.
    assert trainer.global_step == 2 and callback.stopped_at == 2
    ckpt = tmp_path / "checkpoints" / "stabmon-stop-step=2.ckpt"
    assert callback.stop_checkpoint == str(ckpt) and ckpt.exists()
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2
    assert _hooks_left(module) == 0


def test_config_has_hparams_on_top_and_trainer_settings(tmp_path):
    module = LitGPT(lr=3e-3, variant="qkv_norm")
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=4, logger=False, default_root_dir=str(tmp_path))
    config = lightning_config(trainer, module)
    json.dumps(config, allow_nan=False)
    assert config["lr"] == 3e-3 and config["variant"] == "qkv_norm" and config["framework"] == "lightning"
    assert config["trainer"]["accumulate_grad_batches"] == 4 and config["trainer"]["max_steps"] == 3
    assert config["model_class"] == "LitGPT"


def test_options_are_checked_when_the_callback_is_built():
    with pytest.raises(TypeError, match="on_alrt"):
        StabmonCallback(on_alrt="stop")
    callback = StabmonCallback(every=3, logits=False, on_alert="stop", checkpoint_dir="/tmp/x")
    assert callback.run.every == 3 and callback.run.attach_options == {"logits": False}


def test_an_exception_in_training_removes_the_hooks(tmp_path):
    class Exploding(LitGPT):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("data loader handed us garbage")
            return super().training_step(batch, batch_idx)

    module, sink = Exploding(), MemorySink()
    callback = StabmonCallback(sink=sink)
    with pytest.raises(RuntimeError, match="garbage"):
        _fit(module, callback, tmp_path, max_steps=10)
    assert [r["step"] for r in sink.records] == [1, 2]
    assert callback.monitor is None and _hooks_left(module) == 0
