"""What the forward hook on each site computes: one closure per :class:`SitePlan`.

:func:`site_compute` registers the site's series with the step accumulator (keys built by
:mod:`stabmon.wire`) and returns ``compute(out)``, which the monitor's hook calls with the
module's output on recorded training forwards. Every closure computes on the device
(:mod:`.stats`) and appends one small tensor to the accumulator: no host sync, no Python state
that ``torch.compile`` would have to guard on beyond the plan itself. Sampled statistics read the
monitor's device counter (``probe_step``), which ``Monitor.step()`` advances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from stabmon.wire import RESID_SITE, layer_key, model_key

from .accumulate import StepAccumulator
from .discovery import SiteRef
from .stats import (
    fused_qkv_logit_max,
    fused_qkv_sampled,
    head_entropy,
    lm_head_sampled,
    max_abs,
    probe_index,
    probe_logit_max,
    qk_logit_bound,
    qkv_l2_and_bound,
    rotary_logit_bound,
    strided_positions,
    token_l2,
    token_l2_heads,
)

LM_HEAD_POSITIONS = 64
"""Positions (of the flattened batch) whose LM-head log-partition is computed per recorded step."""


@dataclass
class SitePlan:
    """What the hook on one module computes."""

    name: str
    ref: SiteRef
    attn: str | None = None
    """None, or the attention statistic this module yields: ``fused`` (logit max and entropy from
    a fused q|k|v output), ``q``/``k`` (half of the rotary logit bound), ``probe`` (logit max from
    a logit probe), ``entropy`` (from a probability probe), ``bound`` (from a ``(q, k)`` probe)."""
    n_head: int | None = None
    """Heads of a fused q|k|v output (``fused``)."""
    head_dim: int | None = None
    """Per-head width of a q or k output (``q``/``k``)."""
    scale: float | None = None
    """Logit scale (``fused``, ``q``/``k``, ``bound``); None means 1/sqrt(head size)."""
    rows: int | None = None
    """``fused``: query rows sampled per recorded step (None: the exact full map, costlier)."""
    hooked: bool = True
    """False for parameter-only sites (norm layers): no forward hook."""


def site_compute(
    sp: SitePlan, acc: StepAccumulator, counter: torch.Tensor, qk: dict[int, dict[str, torch.Tensor]]
) -> tuple[Callable[[Any], None], bool]:
    """``(compute, raw)`` for one site: ``compute`` takes the module's output (the whole output
    when ``raw``, else its first tensor) and adds the site's statistics to ``acc``."""
    layer, site = sp.ref
    reg = acc.register

    def keys(*stats: str, s: str = site) -> tuple[int, ...]:
        return tuple(reg(layer_key(layer, s, stat)) for stat in stats)

    if sp.attn == "probe":
        ids = keys("logit_max", s="attn")
        return (lambda x: acc.add(ids, probe_logit_max(x).reshape(1))), False
    if sp.attn == "entropy":
        ids = keys("entropy_mean", "entropy_min_head", s="attn")
        return (lambda p: acc.add(ids, head_entropy(p))), False
    if sp.attn == "bound":
        ids = keys("logit_bound", s="attn")
        scale = sp.scale

        def bound(out: Any) -> None:
            q, k = out
            acc.add(ids, qk_logit_bound(q, k, scale if scale else q.shape[-1] ** -0.5).reshape(1))

        return bound, True
    if sp.attn == "qkv_bound":
        ids = keys("l2_mean", "l2_max") + keys("logit_bound", s="attn")
        n_head = sp.n_head
        return (lambda x: acc.add(ids, qkv_l2_and_bound(x, n_head))), False
    if sp.attn == "fused":
        n_head, scale, rows = sp.n_head, sp.scale, sp.rows
        if rows is None:
            ids = keys("l2_mean", "l2_max") + keys("logit_max", s="attn")
            return (
                lambda x: acc.add(
                    ids, torch.cat((token_l2(x), fused_qkv_logit_max(x, n_head, scale).reshape(1)))
                )
            ), False
        ids = keys("l2_mean", "l2_max") + keys("logit_max", "entropy_mean", "entropy_min_head", s="attn")

        def fused(x: torch.Tensor) -> None:
            b, r = probe_index(counter, x.shape[0], x.shape[1], rows)
            acc.add(ids, torch.cat((token_l2(x), fused_qkv_sampled(x, n_head, scale, b, r))))

        return fused, False
    if sp.attn in ("q", "k"):
        ids = keys("l2_mean", "l2_max")
        bound_ids = keys("logit_bound", s="attn")
        role, other = sp.attn, ("k" if sp.attn == "q" else "q")
        head_dim, scale = sp.head_dim, sp.scale

        def half(x: torch.Tensor) -> None:
            l2, heads = token_l2_heads(x, x.shape[-1] // head_dim)  # (2,), (n_heads,)
            acc.add(ids, l2)
            pending = qk.setdefault(layer, {})
            mate = pending.pop(other, None)
            if mate is None:
                pending[role] = heads
                return
            q, k = (heads, mate) if role == "q" else (mate, heads)
            acc.add(bound_ids, rotary_logit_bound(q, k, scale).reshape(1))

        return half, False
    if site == RESID_SITE:
        ids = keys("max_abs")
        return (lambda x: acc.add(ids, max_abs(x))), False
    if site == "lm_head":
        ids = tuple(reg(model_key("lm_head", s)) for s in ("logit_max_abs", "logz_mean", "logz_max"))

        def head(z: torch.Tensor) -> None:
            n = z.numel() // z.shape[-1]
            acc.add(ids, lm_head_sampled(z, strided_positions(counter, n, LM_HEAD_POSITIONS)))

        return head, False
    ids = keys("l2_mean", "l2_max")
    return (lambda x: acc.add(ids, token_l2(x))), False
