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

Other optimizers (SGD, Adafactor, Muon, ...) get ``grad_norm`` and ``param_norm`` only.
Parameters sharded by FSDP2 (DTensors) are read through their local shards (``to_local()``: no
communication) and every statistic is emitted as a *root* series: per-site sums of squares (over
``numel`` for ``update_rms``; ``update_ratio``'s denominator in a hidden series), added over ranks
by the step's one collective before the square root (:mod:`.distributed`). The results
are small device tensors added to the step's accumulator: they travel in the step's one transfer.
Temporaries are bounded: parameters are processed in chunks of :data:`CHUNK_ELEMENTS` elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stabmon.wire import layer_key, model_key

from .accumulate import ROOT, StepAccumulator, to_device
from .discovery import SiteRef
from .distributed import is_dtensor, local, local_grads_sq, rank_and_world, share

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
        self.ids: frozenset[int] = frozenset(id(p) for p in self.params)
        """``id()`` of every monitored parameter."""
        self.sharded = any(is_dtensor(p) for p in self.params)
        """FSDP2: statistics from the local shards, as sums of squares added over ranks."""
        kind = ROOT if self.sharded else None
        self.stat_ids = {
            stat: [acc.register(_key(ref, stat), kind, _den(ref, stat, self.sharded)) for ref in refs]
            for stat in ("grad_norm", "param_norm", *(("update_rms", "update_ratio") if updates else ()))
        }
        if self.sharded:
            self.stat_ids["update_ratio_den"] = [acc.register(_key(ref, "update_ratio_den")) for ref in refs]
        self.weights: torch.Tensor | None = None
        """Per parameter, 1 / the ranks holding each element (HSDP replicas); None when all 1."""
        if self.sharded:
            world = rank_and_world()[1]
            w = [share(p, world) for p in self.params]
            if any(x != 1.0 for x in w):
                self.weights = to_device(torch.tensor(w), self.params[0].device)
        self.everything = tuple(range(len(self.params)))
        self.split = len({p.device for p in self.params}) > 1
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
        ids = self.stat_ids[stat]
        acc.add(tuple(ids[s] for s in sites), vals)

    def _weigh(self, sq: torch.Tensor, which: tuple[int, ...]) -> torch.Tensor:
        """Sharded: ``sq`` (per parameter of ``which``) over each element's replica count."""
        if self.weights is None:
            return sq
        w = self.weights if which == self.everything else self.weights.index_select(0, self._index(which))
        return sq * w

    def _index(self, which: tuple[int, ...]) -> torch.Tensor:
        hit = self._cache.get(("idx", which))
        if hit is None:
            hit = self._cache[("idx", which)] = to_device(torch.tensor(which), self.params[0].device)
        return hit

    def _stack_sq(self, norms: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        # (P,) squared norms, gathered on one device (a model split over devices); on one device
        # no per-tensor move at all (50 ``to()`` calls cost more than the stack).
        if not self.split:
            return torch.stack(norms).float().square_()
        return torch.stack([n.to(device, non_blocking=True) for n in norms]).float().square_()

    # -- statistics -------------------------------------------------------------------------
    @torch.no_grad()
    def add(
        self, acc: StepAccumulator, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.Tensor | None:
        """Add ``param_norm``, ``grad_norm`` (where gradients exist) and, for an Adam/AdamW that
        has just stepped, ``update_rms`` and ``update_ratio`` of every site to ``acc``.

        Returns the sum of the monitored gradients' squared norms (0-d, on the first parameter's
        device), which the monitor reuses for the total gradient norm, or None without gradients.
        """
        if not self.params:
            return None
        device = self.params[0].device
        slots, sites, _ = self._layout(self.everything, device)
        params = [local(p) for p in self.params] if self.sharded else self.params
        psq = self._weigh(self._stack_sq(torch._foreach_norm(params), device), self.everything)  # ||w||^2
        self._emit(acc, "param_norm", sites, self._root(self._site_sum(psq, slots, len(sites))))
        grads = [p.grad if p.grad is None else local(p.grad) for p in self.params]
        with_grad = self.everything
        if any(g is None for g in grads):
            with_grad = tuple(i for i, g in enumerate(grads) if g is not None)
            if not with_grad:
                return None
            grads = [grads[i] for i in with_grad]
        slots, sites, _ = self._layout(with_grad, device)
        gsq = self._weigh(self._stack_sq(torch._foreach_norm(grads), device), with_grad)
        gsite = self._site_sum(gsq, slots, len(sites))
        self._emit(acc, "grad_norm", sites, self._root(gsite.clone()))
        if self.updates and isinstance(optimizer, ADAM_TYPES):
            self._add_adam(acc, optimizer, psq)
        return gsite.sum()

    def _root(self, sq: torch.Tensor) -> torch.Tensor:
        """The norm from per-site sums of squares; sharded, the sums themselves (summed over ranks
        and rooted when the step is combined)."""
        return sq if self.sharded else sq.sqrt_()

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
        state = optimizer.state
        by_group: dict[int, list[int]] = {}
        for i, p in enumerate(self.params):
            g = group_of.get(i)
            if g is not None and p.grad is not None and "exp_avg_sq" in state.get(p, ()):
                by_group.setdefault(g, []).append(i)
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
        key = tuple(order)
        slots, sites, numel = self._layout(key, device)
        n = len(sites)
        both = torch.cat((*rms_sq, *upd_sq)) if len(rms_sq) > 1 else torch.cat((rms_sq[0], upd_sq[0]))
        if key != self.everything:  # psq in the order the slots follow
            psq = psq.index_select(0, self._index(key))
        both = self._weigh(both.view(2, -1), key).view(-1)  # (psq is weighed already)
        # One index_add_ for the three per-site sums: slots offset by 0, n, 2n.
        sums = self._site_sum(torch.cat((both, psq)), self._slots3(key, slots, n), 3 * n).view(3, n)
        if self.sharded:  # sums over ranks, rooted when the step is combined
            self._emit(acc, "update_rms", sites, sums[0].div(numel))
            self._emit(acc, "update_ratio", sites, sums[1])
            self._emit(acc, "update_ratio_den", sites, sums[2])
            return
        self._emit(acc, "update_rms", sites, sums[0].div(numel).sqrt_())
        self._emit(acc, "update_ratio", sites, sums[1].div(sums[2]).sqrt_())

    def _slots3(self, key: tuple[int, ...], slots: torch.Tensor, n: int) -> torch.Tensor:
        hit = self._cache.get(("x3", key, slots.device))
        if hit is None:
            hit = torch.cat((slots, slots + n, slots + 2 * n))
            self._cache[("x3", key, slots.device)] = hit
        return hit

    def _adam_chunk(
        self, optimizer: torch.optim.Optimizer, group: dict[str, Any], chunk: list[int], decoupled: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per parameter of ``chunk``: (sum (g / denom)^2, ||delta w||^2), each (len(chunk),).

        Six foreach passes: ``d = sqrt(v) + eps sqrt(bc2)`` is
        ``sqrt(bc2) * denom``, so the bias corrections become scalars applied to the (P,) norms:
        ``g / denom = sqrt(bc2) g / d`` and ``m_hat / denom = sqrt(bc2) / bc1 * m / d``.
        """
        params = [self.params[i] for i in chunk]
        states = [optimizer.state[p] for p in params]
        if self.sharded:  # the local shards of parameters, gradients and moments
            params = [local(p) for p in params]
            states = [{k: local(v) for k, v in s.items()} for s in states]
        device = params[0].device
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], float(group["eps"]), float(group["weight_decay"])
        # The parameters of a group step together. The step count is a tensor (on the host, or
        # on the device for capturable/fused Adam): the bias corrections stay tensors, moved
        # without a sync, so nothing here reads a value back to Python.
        step = states[0]["step"]
        if isinstance(step, torch.Tensor) and step.device.type == "cpu":
            step = float(step)  # a host tensor (Adam's default): reading it costs no device sync
        if isinstance(step, torch.Tensor):
            step = (
                to_device(step.detach().to(torch.float32), device) if step.device != device else step.float()
            )
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        s2 = bc2**0.5
        v = [s["max_exp_avg_sq"] if group.get("amsgrad") else s["exp_avg_sq"] for s in states]
        d = torch._foreach_sqrt(v)  # the one temporary the size of the chunk besides r/u
        torch._foreach_add_(d, eps * s2)  # float or 0-d tensor overload
        r = torch._foreach_div([local(self.params[i].grad) for i in chunk], d)  # g / d
        rms_sq = self._stack_sq(torch._foreach_norm(r), device) * bc2
        del r
        m = [s["exp_avg"] for s in states]
        factor = lr * s2 / bc1  # Adam: delta = factor * m / d
        if decoupled and wd:
            # AdamW: w_new = (1 - lr wd) w_old - lr m_hat/denom, so
            # delta = lr / (1 - lr wd) * (m_hat/denom + wd w_new)
            #       = factor / (1 - lr wd) * (m/d + wd bc1 / s2 * w_new)
            c = wd * bc1 / s2
            if isinstance(c, float):  # one pass: u = w + (m/d) / c = (m/d + c w) / c
                u = torch._foreach_addcdiv(params, m, d, value=1.0 / c)
                factor = factor * c
            else:  # a device step count: the scalar stays a tensor
                u = torch._foreach_mul(params, c)
                torch._foreach_addcdiv_(u, m, d)
            factor = factor / (1 - lr * wd)
        else:
            u = torch._foreach_div(m, d)
        upd_sq = self._stack_sq(torch._foreach_norm(u), device) * (factor * factor)
        return rms_sq, upd_sq


def grads_norm(
    params: list[torch.Tensor], monitored_sq: torch.Tensor | None, sharded: bool, world: int
) -> torch.Tensor | None:
    """The L2 norm of ``params``' gradients and of those whose sum of squares ``monitored_sq``
    already holds; sharded (FSDP2), this rank's share of the sum of squares instead."""
    if sharded:
        rest = local_grads_sq(params, world)
        if rest is None or monitored_sq is None:
            return rest if monitored_sq is None else monitored_sq
        return monitored_sq + rest.to(monitored_sq.device, non_blocking=True)
    if not params:
        return monitored_sq.sqrt() if monitored_sq is not None else None
    # foreach norms grouped per device, combined on the first grad's device: no host sync.
    grads = [p.grad for p in params]
    rest = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
    if monitored_sq is None:
        return rest
    return (monitored_sq + rest.to(monitored_sq.device, non_blocking=True).square()).sqrt()


def _den(ref: SiteRef, stat: str, sharded: bool) -> str | None:
    return _key(ref, "update_ratio_den") if sharded and stat == "update_ratio" else None


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
