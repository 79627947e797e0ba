"""stabmon for the Hugging Face ``Trainer``: one callback, ``Trainer(..., callbacks=[StabmonCallback()])``.

:class:`StabmonCallback` attaches the forward hooks when training begins (to the model the
Trainer hands its callbacks) and closes one record per optimizer step, so gradient
accumulation yields one record per update, keyed by ``state.global_step``. Where each value
comes from, given what the Trainer exposes to callbacks:

- ``loss``: the Trainer never hands callbacks the per-step loss (``on_log`` only sees an average
  over ``logging_steps``), so a forward hook on the model keeps each training forward's
  ``outputs.loss`` (detached, on the device) and the step combines them the way the Trainer
  scales them: micro-batch losses normalised by ``num_items_in_batch`` (the accumulated token
  count) are summed, plain per-batch means are averaged.
- ``lr``: ``optimizer.param_groups[0]["lr"]`` in ``on_pre_optimizer_step``, the rate the update uses.
- ``grad_norm``: the Trainer's own pre-clipping norm when it logs that step (``on_log`` comes
  before the record is closed); at other steps the norm of the gradients the optimizer is about
  to apply, computed on the device in ``on_pre_optimizer_step``. Without clipping
  (``max_grad_norm=0``) both are the same number; with clipping the latter is capped at
  ``max_grad_norm``, so set ``logging_steps=1`` for the exact pre-clip norm at every step.

The run is registered with ``TrainingArguments.to_dict()`` (JSON-safe) as its config. An alert
with ``on_alert="stop"`` (or a callable returning ``"stop"``) saves a checkpoint
(``control.should_save``) and stops training (``control.should_training_stop``) at the next step
boundary; under DDP/Accelerate rank 0's decision is broadcast so every rank stops at the same step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trainer_hooks.integrations.hf needs Hugging Face transformers: pip install 'stabmon[hf]' "
        "(transformers and accelerate)"
    ) from e

from trainer_hooks.integrations import session
from trainer_hooks.integrations.run import MonitoredRun


def training_config(args: Any, model: torch.nn.Module) -> dict[str, Any]:
    """The run config sent to the collector: ``TrainingArguments.to_dict()`` plus the model's shape."""
    config = session.json_safe(args.to_dict())
    config["framework"] = "transformers"
    config.setdefault("lr", config.get("learning_rate"))
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "to_dict"):
        config["model"] = session.json_safe(model_config.to_dict())
    config["n_params"] = sum(p.numel() for p in model.parameters())
    return config


class StabmonCallback(TrainerCallback):
    """Stream stabmon statistics from a ``transformers.Trainer`` run (see the module docstring).

    ``StabmonCallback()`` reads the collector from ``$STABMON_URL``/``$STABMON_TOKEN``. The
    options (``url``, ``token``, ``every``, ``on_alert``, ``sink``, ``run_name``, ``project``,
    ``run_id``, ``stop_on``, ``client_options``, and ``attach`` keywords such as ``sites=``) are
    those of :class:`~trainer_hooks.integrations.run.MonitoredRun`.
    """

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self.run = MonitoredRun.from_options(url, token, **options)
        self.alerts = self.run.alerts
        self._loss_hook: Any = None
        self._losses: list[tuple[torch.Tensor, bool]] = []
        self._pending: dict[str, Any] | None = None
        self._pending_step = -1
        self._grad_norm: torch.Tensor | None = None
        self._lr: float | None = None
        self._failed = False

    @property
    def monitor(self):
        return self.run.monitor

    @property
    def stopped_at(self) -> int | None:
        return self.run.stopped_at

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("StabmonCallback: the Trainer passed no model to on_train_begin")
        self._remove_loss_hook()
        self._failed = False
        self._pending = None
        # Records are numbered like the Trainer's logs: step k is the k-th optimizer update.
        self.run.start(
            model,
            name=args.run_name or os.path.basename(os.path.normpath(args.output_dir)) or "hf-trainer",
            config=training_config(args, model),
            start_step=state.global_step + 1,
        )
        self._loss_hook = model.register_forward_hook(self._capture_loss, with_kwargs=True)
        self._scale = args.world_size if (args.average_tokens_across_devices and args.world_size > 1) else 1

    def _capture_loss(self, module, args, kwargs, output) -> None:
        if not module.training:
            return  # evaluation passes are not training steps
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append((loss.detach(), kwargs.get("num_items_in_batch") is not None))

    @session.guarded
    def on_step_begin(self, args, state, control, **kwargs):
        self._emit()
        self._losses.clear()

    @session.guarded
    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if optimizer is not None and self.run.monitor is not None:
            self.run.monitor.watch_optimizer(optimizer)  # parameter statistics after its step
        if not self.run.records(state.global_step + 1):
            return
        self._grad_norm = session.grad_norm(model.parameters()) if model is not None else None
        self._lr = session.current_lr(optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        self._close_step(state.global_step)
        # Every rank takes part in the handshake at every step, so all of them stop together.
        if self.run.stop_agreed(state.global_step):
            control.should_save = True
            control.should_training_stop = True

    @session.guarded
    def _close_step(self, step: int) -> None:
        # The record is handed to the monitor at the next step boundary, after on_log, so the
        # Trainer's pre-clip grad_norm can replace ours on the steps it logs.
        self._pending = {}
        if not self.run.records(step):
            return  # the monitor still counts the step; its hooks were off
        values = {"loss": self._step_loss(), "lr": self._lr, "grad_norm": self._grad_norm}
        self._pending = {k: v for k, v in values.items() if v is not None}
        self._pending_step = step

    def _step_loss(self) -> torch.Tensor | None:
        if not self._losses:
            return None
        losses = torch.stack([loss.float() for loss, _ in self._losses])
        if any(scaled for _, scaled in self._losses):
            # Each micro-batch loss is its token sum over the step's (global) token count.
            return losses.sum() * self._scale
        return losses.mean()

    @session.guarded
    def on_log(self, args, state, control, logs=None, **kwargs):
        pending = self._pending
        if pending and logs and self._pending_step == state.global_step and "grad_norm" in logs:
            pending["grad_norm"] = float(logs["grad_norm"])  # the Trainer's pre-clip norm

    @session.guarded
    def _emit(self) -> None:
        if self._pending is None or self.run.monitor is None:
            return
        pending, self._pending = self._pending, None
        self.run.monitor.step(**pending)

    @session.guarded
    def on_epoch_end(self, args, state, control, **kwargs):
        self._emit()

    def on_train_end(self, args, state, control, **kwargs):
        self._emit()
        self._remove_loss_hook()
        self.run.finish({"global_step": state.global_step})

    def _remove_loss_hook(self) -> None:
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        self._losses.clear()
