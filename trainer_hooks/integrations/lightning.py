"""stabmon for PyTorch Lightning: one callback, ``L.Trainer(..., callbacks=[StabmonCallback()])``.

:class:`StabmonCallback` attaches the forward hooks to the ``LightningModule`` when training
starts and closes one record per optimizer step (``trainer.global_step``), so
``accumulate_grad_batches`` yields one record per update. The values come from Lightning's own
hooks: ``loss`` is the sum of the losses handed to ``on_before_backward`` during the step (in
automatic optimization Lightning has already divided each by ``accumulate_grad_batches``, so
the sum is the step's mean loss); ``grad_norm`` and ``lr`` are taken in
``on_before_optimizer_step``, which Lightning calls after the backward passes and *before*
gradient clipping, so the norm is the unclipped one; the norm is computed on the device.

The run is registered with the module's ``hparams`` (top level, so ``lr``/``variant`` are found
where the dashboard looks) and the trainer's settings under ``"trainer"``. An alert with
``on_alert="stop"`` (or a callable returning ``"stop"``) saves a checkpoint with
``trainer.save_checkpoint`` and sets ``trainer.should_stop`` at the next optimizer step; under DDP
rank 0's decision is broadcast, so every rank saves and stops at the same step. Lightning
itself keeps training past ``should_stop`` until ``min_steps``/``min_epochs`` are reached.
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trainer_hooks.integrations.lightning needs PyTorch Lightning: pip install 'stabmon[lightning]'"
    ) from e

from trainer_hooks.integrations import session
from trainer_hooks.integrations.run import MonitoredRun


def lightning_config(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The run config: the module's hparams at the top level, the trainer's settings under ``trainer``."""
    config = session.json_safe(dict(getattr(pl_module, "hparams", {}) or {}))
    optimizers = getattr(trainer, "optimizers", None) or []
    if "lr" not in config and optimizers:
        config["lr"] = session.current_lr(optimizers[0])
    config["framework"] = "lightning"
    config["model_class"] = type(pl_module).__name__
    config["n_params"] = sum(p.numel() for p in pl_module.parameters())
    config["trainer"] = session.json_safe(
        {
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
            "precision": trainer.precision,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "optimizers": [type(o).__name__ for o in optimizers],
        }
    )
    return config


class StabmonCallback(Callback):
    """Stream stabmon statistics from a Lightning ``Trainer.fit`` (see the module docstring).

    ``StabmonCallback()`` reads the collector from ``$STABMON_URL``/``$STABMON_TOKEN``.
    ``checkpoint_dir`` is where the checkpoint taken before an alert-driven stop goes (default:
    the ``ModelCheckpoint`` directory, else ``default_root_dir/checkpoints``). The other
    options (``url``, ``token``, ``every``, ``on_alert``, ``sink``, ``run_name``, ``project``,
    ``run_id``, ``stop_on``, ``client_options``, and ``attach`` keywords such as ``sites=``) are
    those of :class:`~trainer_hooks.integrations.run.MonitoredRun`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        self.run = MonitoredRun.from_options(url, token, **options)
        self.alerts = self.run.alerts
        self.checkpoint_dir = checkpoint_dir
        self.stop_checkpoint: str | None = None
        self._losses: list[torch.Tensor] = []
        self._grad_norm: torch.Tensor | None = None
        self._lr: float | None = None
        self._last_step = -1
        self._failed = False

    @property
    def monitor(self):
        return self.run.monitor

    @property
    def stopped_at(self) -> int | None:
        return self.run.stopped_at

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        self._failed = False
        self.stop_checkpoint = None
        self._losses.clear()
        self._last_step = trainer.global_step
        # Step k is the k-th optimizer update, as trainer.global_step counts it after the update.
        self.run.start(
            pl_module,
            name=type(pl_module).__name__,
            config=lightning_config(trainer, pl_module),
            start_step=trainer.global_step + 1,
        )

    def on_before_backward(self, trainer, pl_module, loss):
        if self.run.monitor is not None and loss.numel() == 1:
            self._losses.append(loss.detach())

    @session.guarded
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.run.monitor is not None:
            self.run.monitor.watch_optimizer(optimizer)  # parameter statistics after its step
        if not self.run.records(trainer.global_step + 1):
            return
        self._grad_norm = session.grad_norm(pl_module.parameters())  # before Lightning clips
        self._lr = session.current_lr(optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.run.monitor is None or step == self._last_step:
            return  # still accumulating: no optimizer step yet
        self._last_step = step
        self._close_step(step)
        # Every rank takes part in the handshake at every optimizer step: all stop together.
        if self.run.stop_agreed(step):
            self._stop(trainer, step)

    @session.guarded
    def _close_step(self, step: int) -> None:
        values: dict[str, Any] = {}
        if self.run.records(step):
            loss = torch.stack([x.float() for x in self._losses]).sum() if self._losses else None
            values = {"loss": loss, "lr": self._lr, "grad_norm": self._grad_norm}
        self._losses.clear()
        self._grad_norm, self._lr = None, None
        self.run.monitor.step(**{k: v for k, v in values.items() if v is not None})

    def _stop(self, trainer, step: int) -> None:
        directory = self.checkpoint_dir
        if directory is None:
            ckpt = getattr(trainer, "checkpoint_callback", None)
            directory = getattr(ckpt, "dirpath", None) or os.path.join(
                trainer.default_root_dir, "checkpoints"
            )
        path = os.path.join(os.fspath(directory), f"stabmon-stop-step={step}.ckpt")
        trainer.save_checkpoint(path)  # a collective under DDP: every rank is here at this step
        self.stop_checkpoint = path
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        summary: dict[str, Any] = {"global_step": trainer.global_step}
        if self.stop_checkpoint is not None:
            summary["checkpoint"] = self.stop_checkpoint
        self.run.finish(summary)

    def on_exception(self, trainer, pl_module, exception):
        self.run.finish(
            {"global_step": trainer.global_step, "error": f"{type(exception).__name__}: {exception}"}
        )
