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

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trainer_hooks.integrations.hf needs Hugging Face transformers: pip install 'stabmon[hf]' "
        "(transformers and accelerate)"
    ) from e

from trainer_hooks.hooks import attach
from trainer_hooks.integrations import session

log = logging.getLogger("stabmon.integrations")


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

    ``url``/``token`` default to ``$STABMON_URL``/``$STABMON_TOKEN``; ``sink`` replaces the
    collector client by any sink (it is then the caller's to close). ``every=N`` records every
    N-th optimizer step. ``on_alert`` is ``"log"``, ``"stop"`` or a callable taking each alert;
    ``stop_on`` the severities that ``"stop"`` acts on; ``client_options`` go to the
    `Client` (``spool_dir=``, ``flush_interval_s=``, ...). ``attach_options`` go to
    ``trainer_hooks.hooks.attach`` (``sites=``, ``logits=``, ``reduce=``, ...).
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
        **attach_options: Any,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.url, self.token, self.sink = url, token, sink
        self.every = every
        self.run_name, self.project, self.run_id = run_name, project, run_id
        self.alerts = session.AlertSwitch(on_alert, stop_on)
        self.client_options = dict(client_options or {})
        self.attach_options = attach_options
        self.monitor = None
        self.stopped_at: int | None = None
        self._sink: Any = None
        self._owned = False
        self._loss_hook: Any = None
        self._losses: list[tuple[torch.Tensor, bool]] = []
        self._pending: dict[str, Any] | None = None
        self._pending_step = -1
        self._grad_norm: torch.Tensor | None = None
        self._lr: float | None = None
        self._failed = False

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("StabmonCallback: the Trainer passed no model to on_train_begin")
        if self.monitor is not None:  # a second trainer.train() on the same callback
            self._teardown(status=None)
        self._failed = False
        self.alerts.reset()
        self.stopped_at = None
        run_name = self.run_name or args.run_name or os.path.basename(os.path.normpath(args.output_dir))
        options = {"reduce": session.distributed(), **self.attach_options}
        self._sink, self._owned = session.open_sink(
            url=self.url,
            token=self.token,
            sink=self.sink,
            run_name=run_name or "hf-trainer",
            project=self.project,
            config=training_config(args, model),
            run_id=self.run_id,
            alert_switch=self.alerts,
            reduce=options["reduce"],
            client_options=self.client_options,
        )
        # Records are numbered like the Trainer's logs: step k is the k-th optimizer update.
        try:
            self.monitor = attach(
                model, sink=self._sink, every=self.every, start_step=state.global_step + 1, **options
            )
        except Exception:
            session.release_sink(self._sink, self._owned, status=None)
            self._sink = None
            raise
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
        if (state.global_step + 1) % self.every:
            return
        self._grad_norm = session.grad_norm(model.parameters()) if model is not None else None
        self._lr = session.current_lr(optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        self._close_step(state.global_step)
        # Every rank takes part in the broadcast at every step, so all of them stop together.
        if session.agree(self.alerts.stop_requested):
            self.stopped_at = state.global_step
            if state.is_world_process_zero:
                log.warning(
                    "stabmon: stopping training at step %d after alert %s",
                    state.global_step,
                    self.alerts.reason,
                )
            control.should_save = True
            control.should_training_stop = True

    @session.guarded
    def _close_step(self, step: int) -> None:
        # The record is handed to the monitor at the next step boundary, after on_log, so the
        # Trainer's pre-clip grad_norm can replace ours on the steps it logs.
        self._pending = {}
        if step % self.every:
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
        if self._pending is None or self.monitor is None:
            return
        pending, self._pending = self._pending, None
        self.monitor.step(**pending)

    @session.guarded
    def on_epoch_end(self, args, state, control, **kwargs):
        self._emit()

    def on_train_end(self, args, state, control, **kwargs):
        self._emit()
        status = "stopped" if self.stopped_at is not None else "finished"
        summary = {"global_step": state.global_step}
        if self.stopped_at is not None:
            summary.update(stopped_at=self.stopped_at, stop_reason=self.alerts.reason)
        self._teardown(status=status, summary=summary)

    def _teardown(self, status: str | None, summary: dict | None = None) -> None:
        """Remove every hook and release the sink (closing it only when the callback built it)."""
        try:
            if self._loss_hook is not None:
                self._loss_hook.remove()
            if self.monitor is not None:
                self.monitor.remove()
            if self._sink is not None:
                session.release_sink(self._sink, self._owned, status, summary)
        except Exception:
            log.exception("stabmon: releasing the monitor failed")
        finally:
            self._loss_hook = self.monitor = self._sink = None
            self._pending = None
            self._losses.clear()
