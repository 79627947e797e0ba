"""The :class:`Monitor`: forward hooks on the discovered sites plus the per-step record.

A ``Monitor`` is built by :func:`trainer_hooks.hooks.attach` from a plan (which module plays
which site, which attention statistic each layer gets). Its hooks first check a Python flag
(``every=N``: off on skipped steps) and the module's ``training`` flag (evaluation forwards are
never recorded), then compute their statistics on the device (:mod:`.stats`) and hand them to a
:class:`~.accumulate.StepAccumulator`. ``step()`` closes the training step: it reduces what the
hooks collected (and, with ``reduce=True``, across ranks), appends the run-level scalars
(``loss``, ``lr``, ``grad_norm``, extras), and moves everything to the host in one transfer; the
record ``{"step", "rank", "values"}`` reaches the sink when that transfer has completed (at once
on CPU; on CUDA at a later ``step()``/``flush()``, so the training thread never waits).
Parameter-side statistics (per-site gradient and parameter norms, Adam's update RMS and
update-to-weight ratio: :mod:`.param_stats`) are added to the same accumulator right after the
optimizer's step (a step post-hook on the optimizer given to ``attach``/``step``/
:meth:`Monitor.watch_optimizer`), or at ``step()`` without one, and travel in the same transfer.
Monitoring never raises into training except for invalid arguments to ``step()``: a failing
hook or statistic is disabled with a warning, a failing sink is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stabmon.wire import Sink, is_valid_key

from .accumulate import ROOT, HostTransfer, StepAccumulator, to_device
from .discovery import NORM_SITES, OUTPUT_SITES, SiteRef
from .distributed import is_dtensor, rank_and_world, reduce_step, sum_over_ranks
from .param_stats import ParamStats, grads_norm, unwrap_optimizer
from .site_hooks import SitePlan, site_compute

_UNSET = object()
PARAM_SITES = (*OUTPUT_SITES, *NORM_SITES, "final_norm")
"""Sites whose parameters get gradient/parameter/update statistics."""

log = logging.getLogger("trainer_hooks.hooks")


@dataclass
class Plan:
    family: str
    sites: list[SitePlan]
    record_attention: list[str] = field(default_factory=list)
    """Attention modules whose ``record_attention`` flag must be switched on for the probes."""
    attn_rows: int | None = None
    """Query rows those modules' probes sample per recorded forward (``probe_rows``)."""
    params: bool = True
    """Whether parameter-side statistics are computed (:mod:`.param_stats`)."""
    update_stats: bool = False
    """Whether Adam's ``update_rms``/``update_ratio`` are computed too (opt-in: the costliest)."""


class Monitor:
    """Handle returned by :func:`~trainer_hooks.hooks.attach`; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        plan: Plan,
        sink: Sink,
        *,
        every: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
        reduce: bool = False,
        start_step: int = 0,
    ) -> None:
        self.model = model
        self.sink = sink
        self.every = every
        self.optimizer = optimizer
        self.reduce = reduce
        self.family = plan.family
        self.sites: dict[str, SiteRef] = {sp.name: sp.ref for sp in plan.sites if sp.hooked}
        self._site_names: dict[str, SiteRef] = {sp.name: sp.ref for sp in plan.sites}
        self.rank, self.world = rank_and_world()
        self._step = start_step
        self._recording = start_step % every == 0
        self._removed = False
        self._acc = StepAccumulator()
        self._transfer = HostTransfer()
        self._handles: list[Any] = []
        self._broken: set[str] = set()
        self._qk: dict[int, dict[str, torch.Tensor]] = {}  # layer -> pending per-head q/k maxima
        self._hook_grad_norm: torch.Tensor | None = None
        self._params_done = False  # parameter statistics already added for this step
        self._holds: tuple[tuple[int, int], bool] | None = None
        self._watched: set[int] = set()
        self._sink_failed = False
        self._restore: list[tuple[nn.Module, str, Any]] = []

        first = next(model.parameters(), None)
        # Rotates the sampled statistics (attention rows, LM-head positions): a device counter,
        # advanced by step(), so the hooks read no Python value that changes every step.
        self.probe_step = torch.zeros(
            (), dtype=torch.long, device=first.device if first is not None else None
        )
        modules = dict(model.named_modules())
        for sp in plan.sites:
            if sp.hooked:
                self._handles.append(modules[sp.name].register_forward_hook(self._make_hook(sp)))
        self._params: ParamStats | None = None
        if plan.params:
            pairs = [(sp.ref, modules[sp.name]) for sp in plan.sites if sp.ref.site in PARAM_SITES]
            self._params = ParamStats(pairs, self._acc, updates=plan.update_stats)
        # FSDP2 (DTensor parameters): norms from local shards, summed over ranks (.distributed).
        self._sharded = self._params is not None and self._params.sharded
        # Attention modules whose probes are fed only on the steps that are recorded: with
        # every=N the other steps do no probe work at all.
        self._toggled: list[nn.Module] = []
        for name in plan.record_attention:
            attn = modules[name]
            self._restore.append((attn, "record_attention", vars(attn).get("record_attention", _UNSET)))
            if hasattr(attn, "probe_rows"):
                self._restore.append((attn, "probe_rows", vars(attn).get("probe_rows", _UNSET)))
                attn.probe_rows = plan.attn_rows
            if not attn.record_attention:  # a user's own True is left alone
                self._toggled.append(attn)
        self._set_record_attention()
        if optimizer is not None:
            self.watch_optimizer(optimizer)

    # ------------------------------------------------------------------ hooks
    @property
    def keys(self) -> list[str]:
        """The per-layer series keys this monitor produces (run-level keys come from ``step()``)."""
        return [k for i, k in enumerate(self._acc.keys) if i not in self._acc.hidden]

    @property
    def step_index(self) -> int:
        """The step that the next ``step()`` call closes."""
        return self._step

    def _make_hook(self, sp: SitePlan) -> Callable[..., None]:
        compute, raw = site_compute(sp, self._acc, self.probe_step, self._qk)
        name = sp.name

        def hook(module: nn.Module, args: Any, out: Any) -> None:
            # Cheapest checks first: skipped steps and evaluation forwards cost two attribute reads.
            if not self._recording or not module.training or name in self._broken:
                return
            x = out if raw or not isinstance(out, (tuple, list)) else out[0]
            try:
                compute(x)
            except Exception as e:  # never take the training job down; stop monitoring this site
                self._broken.add(name)
                log.warning("stabmon: disabling the hook on %s (%s: %s)", name, type(e).__name__, e)

        return hook

    def _set_record_attention(self) -> None:
        for attn in self._toggled:
            attn.record_attention = self._recording

    def watch_optimizer(self, optimizer: Any) -> None:
        """Compute the parameter-side statistics right after each ``optimizer.step()`` (a step
        post-hook: gradients are still there and the Adam state is the one the step used). The
        first optimizer watched also gives ``lr`` and ``grad_norm`` defaults. Idempotent."""
        opt = unwrap_optimizer(optimizer)
        if self._removed or id(opt) in self._watched or not hasattr(opt, "register_step_post_hook"):
            return
        self._watched.add(id(opt))
        self._sharded = self._sharded or any(is_dtensor(p) for g in opt.param_groups for p in g["params"])
        if self.optimizer is None:
            self.optimizer = opt
        self._handles.append(opt.register_step_post_hook(self._after_optimizer_step))

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # Only trusted when this step's forward was already recorded: in a loop that calls
        # mon.step() before optimizer.step(), this hook fires with the next step still ahead.
        if not self._recording or self._acc.empty or self._params_done:
            return
        try:
            gsq = self._add_params(optimizer)
            if optimizer is self.optimizer:
                self._hook_grad_norm = self._grads_norm(gsq)
        except Exception as e:
            log.warning("stabmon: gradient statistics failed (%s: %s)", type(e).__name__, e)

    def _add_params(self, optimizer: Any) -> torch.Tensor | None:
        """Add the parameter-side statistics; returns the monitored gradients' sum of squares."""
        self._params_done = True
        if self._params is None:
            return None
        try:
            return self._params.add(self._acc, optimizer)
        except Exception as e:  # never take training down: stop computing these statistics
            self._params = None
            log.warning("stabmon: disabling parameter statistics (%s: %s)", type(e).__name__, e)
            return None

    def _optimizer_holds_params(self) -> bool:
        """Whether the watched optimizer holds every monitored parameter (cached per optimizer)."""
        assert self.optimizer is not None and self._params is not None
        key = (id(self.optimizer), sum(len(g["params"]) for g in self.optimizer.param_groups))
        if self._holds is None or self._holds[0] != key:
            held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            self._holds = (key, self._params.ids <= held)
        return self._holds[1]

    def _grads_norm(self, monitored_sq: torch.Tensor | None = None) -> torch.Tensor | None:
        """The L2 norm of every gradient the optimizer holds. ``monitored_sq`` is the sum of
        squares of the parameter statistics' gradients, already computed: only the others
        (embeddings, parameters outside any site) are reduced again. Sharded (FSDP2): this
        rank's share of the sum of squares, which :meth:`step` adds to the step as a root series."""
        assert self.optimizer is not None
        skip: frozenset[int] = frozenset()
        if monitored_sq is not None and self._params is not None and self._optimizer_holds_params():
            skip = self._params.ids
        else:
            monitored_sq = None
        groups = self.optimizer.param_groups
        params = [p for g in groups for p in g["params"] if p.grad is not None and id(p) not in skip]
        return grads_norm(params, monitored_sq, self._sharded, self.world)

    # ------------------------------------------------------------------ step
    def step(
        self,
        loss: float | torch.Tensor | None = None,
        *,
        lr: float | torch.Tensor | None = None,
        grad_norm: float | torch.Tensor | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **extra: float | torch.Tensor,
    ) -> None:
        """Close the current training step and emit its record (on recording steps).

        ``loss``, ``lr``, ``grad_norm`` and every keyword in ``extra`` become run-level series;
        each is a Python number or a one-element tensor (kept on the device until the step's
        single transfer). With ``optimizer=`` given to :func:`attach`, ``lr`` defaults to
        ``param_groups[0]["lr"]`` and ``grad_norm`` to the L2 norm of the parameters' gradients
        (taken at ``optimizer.step()``, or now if gradients are present). ``optimizer`` is watched
        from now on (:meth:`watch_optimizer`); call ``step()`` after ``optimizer.step()`` so that
        this step's Adam statistics come from the state the update used.
        """
        if self._removed:
            return
        if optimizer is not None:
            self.watch_optimizer(optimizer)
        if self._recording and not self._params_done and not self._acc.empty:
            self._add_params(unwrap_optimizer(optimizer) if optimizer is not None else None)
        if self._recording:
            scalars: dict[str, Any] = {}
            if loss is not None:
                scalars["loss"] = loss
            if lr is None and self.optimizer is not None:
                lr = self.optimizer.param_groups[0]["lr"]
            if lr is not None:
                scalars["lr"] = lr
            if grad_norm is None and self.optimizer is not None:
                grad_norm = self._hook_grad_norm if self._hook_grad_norm is not None else self._grads_norm()
                if self._sharded and grad_norm is not None:  # a sum of squares, summed over ranks
                    self._acc.add((self._acc.register("grad_norm", ROOT),), grad_norm.reshape(1).float())
                    grad_norm = None
            if grad_norm is not None:
                scalars["grad_norm"] = grad_norm
            for key, value in extra.items():
                if not is_valid_key(key) or key.startswith("layer."):
                    raise ValueError(
                        f"step({key}=...): not a valid run-level series key (letters, digits, '_' "
                        "and '.', not starting with 'layer.')"
                    )
                scalars[key] = value
            self._close_step(scalars)
        else:
            self._acc.clear()
        self._qk.clear()
        self._hook_grad_norm = None
        self._params_done = False
        if self._recording:
            self.probe_step.add_(1)
        self._step += 1
        self._recording = self._step % self.every == 0
        if self.every > 1:
            self._set_record_attention()
        self._emit_ready()  # on CPU the record is complete now; on CUDA usually at a later step

    def _close_step(self, scalars: dict[str, Any]) -> None:
        dev_keys, dev_vals, host = [], [], {}
        for key, value in scalars.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"step({key}=...): expected a number or a one-element tensor, "
                        f"got a tensor of shape {tuple(value.shape)}"
                    )
                if is_dtensor(value):  # FSDP2's clip_grad_norm_: replicated, read without communication
                    value = value.full_tensor()
                dev_keys.append(key)
                dev_vals.append(value.detach().reshape(1).to(torch.float32))
            else:
                try:
                    host[key] = float(value)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"step({key}=...): expected a number, got {value!r}") from e
        try:
            self._pack_and_submit(dev_keys, dev_vals, host)
        except Exception as e:  # a broken monitor must not stop training
            self._acc.clear()
            log.warning("stabmon: dropping step %d (%s: %s)", self._step, type(e).__name__, e)

    def _pack_and_submit(
        self, dev_keys: list[str], dev_vals: list[torch.Tensor], host: dict[str, float]
    ) -> None:
        n = len(self._acc.keys)
        res = self._acc.finish()  # first: it fixes the accumulator's device on the first step
        device = self._acc.device or (dev_vals[0].device if dev_vals else torch.device("cpu"))
        if res is None:
            maxes = torch.full((n,), -math.inf, device=device)
            sums, counts = torch.zeros(n, device=device), torch.zeros(n, device=device)
        else:
            maxes, sums, counts = res
        dev_vals = [v if v.device == device else v.to(device, non_blocking=True) for v in dev_vals]
        if self.reduce and self.world > 1:
            # Every run-level value travels in the one collective, host numbers included.
            keys = sorted([*dev_keys, *host])
            by_key = dict(zip(dev_keys, dev_vals, strict=True))
            parts = [by_key[k] if k in by_key else to_device(torch.tensor([host[k]]), device) for k in keys]
            scal = torch.cat(parts) if parts else torch.zeros(0, device=device)
            maxes, sums, counts, scal = reduce_step(maxes, sums, counts, scal, self.world)
            dev_keys, host = keys, {}
            if self.rank != 0:
                return
        else:
            if self.world > 1 and self._acc.has_root:  # FSDP2 shards: their sums over ranks
                sums = sum_over_ranks(sums, self._acc.root_layout(sums.device)[3])
            scal = torch.cat(dev_vals) if dev_vals else torch.zeros(0, device=device)
        values = self._acc.combine(maxes, sums, counts)
        vec = torch.cat((values, counts, scal))  # (2n + m,) float32: the step's one transfer
        self._transfer.submit(vec, (self._step, n, dev_keys, host))

    # ------------------------------------------------------------------ output
    def _emit_ready(self, drain: bool = False) -> None:
        done = self._transfer.drain() if drain else self._transfer.ready()
        for (step, n, dev_keys, host), floats in done:
            values: dict[str, float] = {}
            keys = self._acc.keys
            for i in range(n):
                if floats[n + i] > 0 and i not in self._acc.hidden:  # recorded this step
                    values[keys[i]] = floats[i]
            values.update(zip(dev_keys, floats[2 * n :], strict=True))
            values.update(host)
            self._write({"step": step, "rank": self.rank, "values": values})

    def _write(self, record: dict) -> None:
        try:
            self.sink.write(record)
        except Exception as e:
            if not self._sink_failed:
                log.warning("stabmon: sink %r failed (%s: %s)", self.sink, type(e).__name__, e)
            self._sink_failed = True

    def flush(self, timeout: float | None = None) -> None:
        """Hand every pending record to the sink (waiting for device copies), then flush the sink."""
        self._emit_ready(drain=True)
        try:
            self.sink.flush(timeout)
        except Exception as e:
            log.warning("stabmon: sink flush failed (%s: %s)", type(e).__name__, e)

    def remove(self) -> None:
        """Remove every hook, restore ``record_attention`` and emit pending records. Idempotent.

        The model is left exactly as before :func:`attach`. A model compiled after attaching keeps
        the hook calls traced into its graph; they see the monitor removed and do nothing.
        """
        if self._removed:
            return
        self._recording = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module, attr, old in self._restore:
            if old is _UNSET:  # it was the class's default: leave no instance attribute behind
                vars(module).pop(attr, None)
            else:
                setattr(module, attr, old)
        self._restore.clear()
        self._toggled.clear()
        self._emit_ready(drain=True)
        self._removed = True

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (
            f"Monitor(family={self.family!r}, sites={len(self.sites)}, every={self.every}, "
            f"step={self._step}, removed={self._removed})"
        )
