"""Per-site parameter, gradient and Adam-update statistics, with foreach ops on the device.

A *site* here is a module whose own parameters are monitored: the block's projections (``qkv``
... ``fc2``), its normalisation layers (their gains: ``attn_norm``, ``q_norm``, ...) and the final
norm. :class:`ParamStats` keeps their parameters in one flat list (tied or shared parameters
counted once) and, once per recorded step, computes per parameter with one ``torch._foreach_*``
call per operation and reduces per site with one ``index_add_``:

- ``grad_norm``: ``||g||`` over the site's parameters (0 for a parameter without a gradient);
- ``param_norm``: ``||w||`` (after the optimizer step when computed from its hook);
- ``update_rms`` (``torch.optim.Adam``/``AdamW`` only): ``sqrt(mean((g / (sqrt(v_hat) + eps))^2))``,
  with ``v_hat`` the bias-corrected second moment that the step just used (``max_exp_avg_sq``
  with ``amsgrad``): about 1 when gradients are as large as their running RMS, much larger when
  a gradient outgrows it (Wortsman et al. 2023, "Stable and low-precision training for
  large-scale vision-language models");
- ``update_ratio`` (Adam/AdamW): ``||delta w|| / ||w||`` of the step just taken, from the
  optimizer state: ``delta = lr * m_hat / (sqrt(v_hat) + eps)`` (Adam; its L2 weight decay is
  inside ``m``), ``delta = lr / (1 - lr*wd) * (m_hat / (sqrt(v_hat) + eps) + wd * w)`` with ``w``
  the parameter after the step (AdamW's decoupled decay, exactly).

Other optimizers (SGD, Adafactor, Muon, ...) get ``grad_norm`` and ``param_norm`` only. The results
are small device tensors added to the step's accumulator: they travel in the step's one transfer.
Temporaries are bounded: parameters are processed in chunks of :data:`CHUNK_ELEMENTS` elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stabmon.wire import layer_key, model_key

from .accumulate import StepAccumulator, to_device
from .discovery import SiteRef

CHUNK_ELEMENTS = 1 << 26
"""At most this many parameter elements per foreach chunk (two float temporaries of this size)."""
ADAM_TYPES = (torch.optim.Adam, torch.optim.AdamW)


def _key(ref: SiteRef, stat: str) -> str:
    return model_key(ref.site, stat) if ref.layer < 0 else layer_key(ref.layer, ref.site, stat)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside framework wrappers (Accelerate's ``optimizer``, Lightning's
    ``_optimizer``), whose ``state`` and step hooks are the real ones."""
    for _ in range(4):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if inner is None or inner is optimizer or not hasattr(inner, "param_groups"):
            break
        optimizer = inner
    return optimizer


class ParamStats:
    """The parameter-side statistics of one monitor (see the module docstring)."""

    def __init__(
        self, modules: Sequence[tuple[SiteRef, nn.Module]], acc: StepAccumulator, updates: bool = True
    ) -> None:
        self.updates = updates
        self.params: list[nn.Parameter] = []
        site_of: list[int] = []
        refs: list[SiteRef] = []
        seen: set[int] = set()
        for ref, module in modules:
            own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
            if not own:
                continue
            seen.update(id(p) for p in own)
            self.params += own
            site_of += [len(refs)] * len(own)
            refs.append(ref)
        self.refs = refs
        self.site_of = site_of
        self.numel = [float(p.numel()) for p in self.params]
        self.ids = {
            stat: [acc.register(_key(ref, stat)) for ref in refs]
            for stat in ("grad_norm", "param_norm", *(("update_rms", "update_ratio") if updates else ()))
        }
        self._cache: dict[Any, Any] = {}
        self._groups: tuple[int, dict[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.params)

    # -- helpers ----------------------------------------------------------------------------
    def _layout(
        self, which: tuple[int, ...], device: torch.device
    ) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """For the parameters ``which``: (their site slots (P,), the sites present, (slots,) numel)."""
        key = (which, device)
        hit = self._cache.get(key)
        if hit is None:
            sites = sorted({self.site_of[i] for i in which})
            slot = {s: j for j, s in enumerate(sites)}
            numel = [0.0] * len(sites)
            for i in which:
                numel[slot[self.site_of[i]]] += self.numel[i]
            hit = (
                to_device(torch.tensor([slot[self.site_of[i]] for i in which]), device),
                sites,
                to_device(torch.tensor(numel), device),
            )
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    @staticmethod
    def _site_sum(sq: torch.Tensor, slots: torch.Tensor, n: int) -> torch.Tensor:
        return torch.zeros(n, device=sq.device, dtype=torch.float32).index_add_(0, slots, sq)

    def _emit(self, acc: StepAccumulator, stat: str, sites: list[int], vals: torch.Tensor) -> None:
        ids = self.ids[stat]
        acc.add(tuple(ids[s] for s in sites), vals)

    @staticmethod
    def _stack_sq(norms: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        # (P,) squared norms, gathered on one device (a model split over devices).
        return torch.stack([n.to(device, non_blocking=True) for n in norms]).float().square()

    # -- statistics -------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, acc: StepAccumulator, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Add ``param_norm``, ``grad_norm`` (where gradients exist) and, for an Adam/AdamW that
        has just stepped, ``update_rms`` and ``update_ratio`` of every site to ``acc``."""
        if not self.params:
            return
        device = self.params[0].device
        everything = tuple(range(len(self.params)))
        slots, sites, _ = self._layout(everything, device)
        psq = self._stack_sq(torch._foreach_norm(self.params), device)  # (P,) ||w||^2
        self._emit(acc, "param_norm", sites, self._site_sum(psq, slots, len(sites)).sqrt_())
        with_grad = tuple(i for i, p in enumerate(self.params) if p.grad is not None)
        if not with_grad:
            return
        slots, sites, _ = self._layout(with_grad, device)
        gsq = self._stack_sq(torch._foreach_norm([self.params[i].grad for i in with_grad]), device)
        self._emit(acc, "grad_norm", sites, self._site_sum(gsq, slots, len(sites)).sqrt_())
        if self.updates and isinstance(optimizer, ADAM_TYPES):
            self._add_adam(acc, optimizer, psq)

    def _group_of(self, optimizer: torch.optim.Optimizer) -> dict[int, int]:
        """Parameter index -> its param group, cached per optimizer."""
        if self._groups is None or self._groups[0] != id(optimizer):
            where = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
            self._groups = (
                id(optimizer),
                {i: where[id(p)] for i, p in enumerate(self.params) if id(p) in where},
            )
        return self._groups[1]

    def _add_adam(self, acc: StepAccumulator, optimizer: torch.optim.Optimizer, psq: torch.Tensor) -> None:
        """``update_rms`` and ``update_ratio`` from the state of an Adam/AdamW that has just
        stepped (nothing before its first step); ``psq`` (P,) holds ``||w||^2`` after the step."""
        decoupled = isinstance(optimizer, torch.optim.AdamW)
        group_of = self._group_of(optimizer)
        by_group: dict[int, list[int]] = {}
        for i, p in enumerate(self.params):
            state = optimizer.state.get(p)
            if p.grad is not None and state and "exp_avg_sq" in state and i in group_of:
                by_group.setdefault(group_of[i], []).append(i)
        if not by_group:
            return
        device = self.params[0].device
        order: list[int] = []
        rms_sq: list[torch.Tensor] = []
        upd_sq: list[torch.Tensor] = []
        for g, members in by_group.items():
            group = optimizer.param_groups[g]
            for chunk in _chunks(members, self.numel):
                r, u = self._adam_chunk(
                    optimizer, group, chunk, decoupled or group.get("decoupled_weight_decay", False)
                )
                order += chunk
                rms_sq.append(r)
                upd_sq.append(u)
        slots, sites, numel = self._layout(tuple(order), device)
        n = len(sites)
        rms = self._site_sum(torch.cat(rms_sq), slots, n).div_(numel).sqrt_()
        upd = self._site_sum(torch.cat(upd_sq), slots, n).sqrt_()
        if order != list(range(len(self.params))):  # psq in the order the slots follow
            psq = psq.index_select(0, to_device(torch.tensor(order), device))
        w = self._site_sum(psq, slots, n)
        self._emit(acc, "update_rms", sites, rms)
        self._emit(acc, "update_ratio", sites, upd / w.sqrt_())

    def _adam_chunk(
        self, optimizer: torch.optim.Optimizer, group: dict[str, Any], chunk: list[int], decoupled: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per parameter of ``chunk``: (sum (g / denom)^2, ||delta w||^2), each (len(chunk),)."""
        params = [self.params[i] for i in chunk]
        states = [optimizer.state[p] for p in params]
        device = params[0].device
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], float(group["eps"]), float(group["weight_decay"])
        # The parameters of a group step together. The step count is a tensor (on the host, or
        # on the device for capturable/fused Adam): the bias corrections stay tensors, moved
        # without a sync, so nothing here reads a value back to Python.
        step = states[0]["step"]
        if isinstance(step, torch.Tensor):
            step = (
                to_device(step.detach().to(torch.float32), device) if step.device != device else step.float()
            )
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        v = [s["max_exp_avg_sq"] if group.get("amsgrad") else s["exp_avg_sq"] for s in states]
        inv = torch._foreach_sqrt(v)  # sqrt(v): the one temporary the size of the chunk
        torch._foreach_div_(inv, bc2**0.5)  # float or 0-d tensor overload
        torch._foreach_add_(inv, eps)
        torch._foreach_reciprocal_(inv)  # 1 / (sqrt(v_hat) + eps)
        r = torch._foreach_mul([p.grad for p in params], inv)  # g / denom
        rms_sq = self._stack_sq(torch._foreach_norm(r), device)
        del r
        torch._foreach_mul_(inv, [s["exp_avg"] for s in states])  # m / denom = bc1 * m_hat / denom
        factor = lr / bc1  # delta = factor * (m / denom)  (Adam)
        if decoupled and wd:
            # AdamW: w_new = (1 - lr wd) w_old - lr m_hat/denom, so
            # delta = lr / (1 - lr wd) * (m_hat/denom + wd w_new)
            #       = factor / (1 - lr wd) * (m/denom + wd bc1 w_new)
            torch._foreach_add_(inv, torch._foreach_mul(params, wd * bc1))
            factor = factor / (1 - lr * wd)
        upd_sq = self._stack_sq(torch._foreach_norm(inv), device) * (factor * factor)
        return rms_sq, upd_sq


def _chunks(members: list[int], numel: list[float]) -> list[list[int]]:
    out: list[list[int]] = [[]]
    size = 0.0
    for i in members:
        if out[-1] and size + numel[i] > CHUNK_ELEMENTS:
            out.append([])
            size = 0.0
        out[-1].append(i)
        size += numel[i]
    return out
