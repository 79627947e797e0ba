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

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

try:
    from lightning.pytorch import Callback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trainer_hooks.integrations.lightning needs PyTorch Lightning: pip install 'stabmon[lightning]'"
    ) from e

from trainer_hooks.hooks import attach
from trainer_hooks.integrations import session

log = logging.getLogger("stabmon.integrations")


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

    ``url``/``token`` default to ``$STABMON_URL``/``$STABMON_TOKEN``; ``sink`` replaces the
    collector client by any sink (it is then the caller's to close). ``every=N`` records every
    N-th optimizer step. ``on_alert`` is ``"log"``, ``"stop"`` or a callable taking each alert;
    ``stop_on`` the severities that ``"stop"`` acts on; ``client_options`` go to the
    `Client` (``spool_dir=``, ``flush_interval_s=``, ...); ``checkpoint_dir`` where the checkpoint
    taken before stopping goes (default: the ``ModelCheckpoint`` directory, else
    ``default_root_dir/checkpoints``). ``attach_options`` go to ``trainer_hooks.hooks.attach``.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        every: int = 1,
        on_alert: str | Callable[[Any], Any] | None = "log",
        sink: Any = None,
        run_name: str | None = None,
        project: str | None = None,
        run_id: str | None = None,
        stop_on: Iterable[str] = ("critical",),
        client_options: Mapping[str, Any] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        **attach_options: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.url, self.token, self.sink = url, token, sink
        self.every = every
        self.run_name, self.project, self.run_id = run_name, project, run_id
        self.alerts = session.AlertSwitch(on_alert, stop_on)
        self.client_options = dict(client_options or {})
        self.checkpoint_dir = checkpoint_dir
        self.attach_options = attach_options
        self.monitor = None
        self.stopped_at: int | None = None
        self.stop_checkpoint: str | None = None
        self._sink: Any = None
        self._owned = False
        self._losses: list[torch.Tensor] = []
        self._grad_norm: torch.Tensor | None = None
        self._lr: float | None = None
        self._last_step = -1
        self._failed = False

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        if self.monitor is not None:  # a second fit() with the same callback
            self._teardown(status=None)
        self._failed = False
        self.alerts.reset()
        self.stopped_at = self.stop_checkpoint = None
        options = {"reduce": session.distributed(), **self.attach_options}
        self._sink, self._owned = session.open_sink(
            url=self.url,
            token=self.token,
            sink=self.sink,
            run_name=self.run_name or type(pl_module).__name__,
            project=self.project,
            config=lightning_config(trainer, pl_module),
            run_id=self.run_id,
            alert_switch=self.alerts,
            reduce=options["reduce"],
            client_options=self.client_options,
        )
        self._last_step = trainer.global_step
        # Step k is the k-th optimizer update, as trainer.global_step counts it after the update.
        try:
            self.monitor = attach(
                pl_module, sink=self._sink, every=self.every, start_step=trainer.global_step + 1, **options
            )
        except Exception:
            session.release_sink(self._sink, self._owned, status=None)
            self._sink = None
            raise

    def on_before_backward(self, trainer, pl_module, loss):
        if self.monitor is not None and loss.numel() == 1:
            self._losses.append(loss.detach())

    @session.guarded
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if (trainer.global_step + 1) % self.every:
            return
        self._grad_norm = session.grad_norm(pl_module.parameters())  # before Lightning clips
        self._lr = session.current_lr(optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.monitor is None or step == self._last_step:
            return  # still accumulating: no optimizer step yet
        self._last_step = step
        self._close_step(step)
        # Every rank takes part in the broadcast at every optimizer step: all stop together.
        if session.agree(self.alerts.stop_requested):
            self._stop(trainer, step)

    @session.guarded
    def _close_step(self, step: int) -> None:
        values: dict[str, Any] = {}
        if step % self.every == 0:
            loss = torch.stack([x.float() for x in self._losses]).sum() if self._losses else None
            values = {"loss": loss, "lr": self._lr, "grad_norm": self._grad_norm}
        self._losses.clear()
        self._grad_norm, self._lr = None, None
        self.monitor.step(**{k: v for k, v in values.items() if v is not None})

    def _stop(self, trainer, step: int) -> None:
        directory = self.checkpoint_dir
        if directory is None:
            ckpt = getattr(trainer, "checkpoint_callback", None)
            directory = getattr(ckpt, "dirpath", None) or os.path.join(
                trainer.default_root_dir, "checkpoints"
            )
        path = os.path.join(os.fspath(directory), f"stabmon-stop-step={step}.ckpt")
        trainer.save_checkpoint(path)  # a collective under DDP: every rank is here at this step
        self.stopped_at, self.stop_checkpoint = step, path
        if trainer.is_global_zero:
            log.warning(
                "stabmon: stopping training at step %d after alert %s (checkpoint %s)",
                step,
                self.alerts.reason,
                path,
            )
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        summary: dict[str, Any] = {"global_step": trainer.global_step}
        if self.stopped_at is not None:
            summary.update(
                stopped_at=self.stopped_at, stop_reason=self.alerts.reason, checkpoint=self.stop_checkpoint
            )
        self._teardown("stopped" if self.stopped_at is not None else "finished", summary)

    def on_exception(self, trainer, pl_module, exception):
        self._teardown(
            "stopped",
            {"global_step": trainer.global_step, "error": f"{type(exception).__name__}: {exception}"},
        )

    def _teardown(self, status: str | None, summary: dict | None = None) -> None:
        """Remove the hooks and release the sink (closing it only when the callback built it)."""
        try:
            if self.monitor is not None:
                self.monitor.remove()
            if self._sink is not None:
                session.release_sink(self._sink, self._owned, status, summary)
        except Exception:
            log.exception("stabmon: releasing the monitor failed")
        finally:
            self.monitor = self._sink = None
            self._losses.clear()
