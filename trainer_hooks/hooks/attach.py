"""``attach(model, sink=...)``: discover a model's sites, plan its statistics, install the hooks.

The plan decides, per layer, where the attention-logit statistic comes from: the logit and
probability probes of stabmon's own model (exact logit max and attention entropy; ``attach``
switches the attention modules' ``record_attention`` on, ``remove()`` switches it back), a fused
q|k|v output (GPT-2, nanoGPT: exact ``max |q.k|/sqrt(hs)``, causal; valid only when q and k
enter the attention as projected, i.e. no rotary embedding and no q/k normalisation), or separate
q and k outputs (Llama family: ``logit_bound = max|q| max|k| / sqrt(hs)``, an upper bound that
rotary embeddings cannot exceed; not emitted where q/k are normalised after the projection,
as in Qwen3). Head counts come from the attention module (``n_head``,
``num_heads``, ``head_dim``) or the model's ``config``, or from ``n_head=``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .discovery import NORM_SITES, SiteRef, discover_sites
from .monitor import Monitor, Plan, Sink
from .site_hooks import SitePlan

_HEAD_ATTRS = ("n_head", "num_heads", "n_heads", "num_attention_heads")


def _parent(modules: Mapping[str, nn.Module], name: str) -> nn.Module | None:
    return modules.get(name.rsplit(".", 1)[0]) if "." in name else None


def _configs(model: nn.Module) -> list[Any]:
    """The model's config object(s), looking through DDP/compile wrappers."""
    out, m = [], model
    for _ in range(4):
        cfg = getattr(m, "config", None)
        if cfg is not None:
            out.append(cfg)
        inner = getattr(m, "module", None) or getattr(m, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        m = inner
    return out


def _int_attr(objs: list[Any], names: tuple[str, ...]) -> int | None:
    for obj in objs:
        for attr in names:
            v = getattr(obj, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _out_width(module: nn.Module) -> int | None:
    for attr in ("out_features", "nf"):  # nn.Linear, transformers' Conv1D
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
    return None


def _scale(attn: nn.Module | None) -> float | None:
    s = getattr(attn, "scaling", None)
    return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None


def _qk_normed(attn: nn.Module | None) -> bool:
    """Whether q and k are normalised after their projections (Qwen3, OLMo2: ``q_norm``/``k_norm``).

    Then the projection outputs' norms say nothing about the logits, and no bound is emitted.
    """
    return attn is not None and any(
        isinstance(getattr(attn, n, None), nn.Module) and not isinstance(getattr(attn, n), nn.Identity)
        for n in ("q_norm", "k_norm")
    )


def _projected_qk(attn: nn.Module | None) -> bool:
    """Whether an attention module with a ``qk_probe`` uses q and k exactly as its ``qkv`` projection
    outputs them (no ``qkv_norm``/``q_norm``/``k_norm`` in between; stabmon's ``baseline``): then the
    qkv hook computes the logit bound from the tensor it reads anyway, and the probe stays unhooked."""
    return attn is not None and all(
        isinstance(getattr(attn, n, nn.Identity()), nn.Identity) for n in ("qkv_norm", "q_norm", "k_norm")
    )


def build_plan(
    model: nn.Module,
    sites: Mapping[str, str] | None = None,
    logits: bool = True,
    n_head: int | None = None,
    *,
    attn_rows: int | None = None,
    lm_head: bool = True,
    params: bool = True,
    update_stats: bool = False,
) -> Plan:
    """Discover the sites of ``model`` and decide what each hook computes (see module docstring)."""
    family, found = discover_sites(model, sites)
    modules = dict(model.named_modules())
    by_layer: dict[int, dict[str, str]] = {}
    for name, ref in found.items():
        by_layer.setdefault(ref.layer, {})[ref.site] = name
    configs = _configs(model)
    plan = Plan(family=family, sites=[], attn_rows=attn_rows, params=params, update_stats=update_stats)
    for name, ref in sorted(found.items(), key=lambda kv: (kv[1].layer, kv[0])):
        layer_sites = by_layer[ref.layer]
        attn = _parent(modules, name)
        sp = SitePlan(name=name, ref=ref)
        if ref.site in NORM_SITES or ref.site == "final_norm":
            if not params:
                continue
            sp.hooked = False  # parameters only
        elif ref.site == "lm_head" and not lm_head:
            continue
        elif ref.site in ("logit_probe", "prob_probe", "qk_probe"):
            if not logits or (ref.site == "qk_probe" and "qkv" in layer_sites and _projected_qk(attn)):
                continue  # (the bound comes from the qkv hook)
            sp.attn = {"logit_probe": "probe", "prob_probe": "entropy", "qk_probe": "bound"}[ref.site]
            if attn is not None and hasattr(attn, "record_attention"):
                attn_name = name.rsplit(".", 1)[0]
                if attn_name not in plan.record_attention:
                    plan.record_attention.append(attn_name)
        elif logits and ref.site == "qkv" and "qk_probe" in layer_sites:
            if _projected_qk(attn) and isinstance(getattr(attn, "n_head", None), int):
                sp.attn = "qkv_bound"  # l2 and the q/k bound in one pass over (B, T, 3d)
                sp.n_head = attn.n_head
        elif logits and ref.site == "qkv" and "logit_probe" not in layer_sites:
            sp.attn = "fused"
            sp.n_head = n_head or _int_attr([attn, *configs], _HEAD_ATTRS)
            if sp.n_head is None:
                raise ValueError(
                    f"{name}: cannot tell the number of attention heads needed for the logit max "
                    "(no n_head/num_heads on the attention module or the model config); pass "
                    "attach(..., n_head=N) or attach(..., logits=False)"
                )
            width = _out_width(modules[name])
            if width is not None and (width % 3 or (width // 3) % sp.n_head):
                raise ValueError(f"{name}: output width {width} is not 3 x a multiple of n_head={sp.n_head}")
            sp.scale = _scale(attn)
            sp.rows = attn_rows
        elif logits and ref.site in ("q", "k") and {"q", "k"} <= layer_sites.keys() and not _qk_normed(attn):
            sp.attn = ref.site
            hd = _int_attr([attn, *configs], ("head_dim",))
            if hd is None:
                heads = n_head or _int_attr([attn, *configs], _HEAD_ATTRS)
                q_width = _out_width(modules[layer_sites["q"]])
                if heads is None or q_width is None:
                    raise ValueError(
                        f"{name}: cannot tell the attention head size needed for the logit bound; "
                        "pass attach(..., n_head=N) or attach(..., logits=False)"
                    )
                hd = q_width // heads
            sp.head_dim = hd
            sp.scale = _scale(attn) or 1.0 / math.sqrt(hd)
        plan.sites.append(sp)
    return plan


def attach(
    model: nn.Module,
    sink: Sink | None = None,
    every: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    sites: Mapping[str, str] | None = None,
    reduce: bool = False,
    logits: bool = True,
    *,
    n_head: int | None = None,
    start_step: int = 0,
    attn_rows: int | None = None,
    lm_head: bool = True,
    params: bool = True,
    update_stats: bool = False,
) -> Monitor:
    """Install stabmon's forward hooks on ``model`` and return the :class:`Monitor` handle.

    Args:
        model: any ``nn.Module`` (attach before ``torch.compile``/DDP wrapping, or to the wrapper).
        sink: receives one ``{"step", "rank", "values"}`` record per emitted step
            (``trainer_hooks.client``: ``Client``, ``MemorySink``, ...). None discards records.
        every: emit every N-th step; on other steps the hooks return immediately.
        optimizer: if given, ``lr`` and ``grad_norm`` are recorded without being passed to ``step()``,
            and the parameter statistics are taken right after each ``optimizer.step()``, with
            Adam's ``update_rms``/``update_ratio`` for ``torch.optim.Adam``/``AdamW`` (skipped for
            other optimizers). It can also be given later, to ``step(optimizer=...)``.
        sites: explicit mapping ``{regex: site}`` replacing auto-discovery (see ``discovery``).
        reduce: under ``torch.distributed``, combine ranks (max of maxima, mean of means) with one
            collective per emitted step; rank 0 alone writes to its sink.
        logits: record attention-logit statistics: the logit max and the attention entropy
            (mean, and min over heads) from ``attn_rows`` sampled query rows of one sequence per
            step where the logits can be computed exactly (stabmon's GPT through its probes,
            fused q|k|v models), and the bound max|q| max|k| / sqrt(hs) over every token
            (stabmon's GPT, rotary models).
        attn_rows: ``None`` (default) computes the attention statistics on the whole (B, nh, T, T)
            map: exact, but on CPU about +20% to +30% of a ``small``-preset step for stabmon's GPT
            (a forward-only attention recomputed per layer). An integer samples that many query
            rows of one sequence per layer and recorded step instead (fixed cost in the batch
            size, linear in the context), which is opt-in because it moves alerts: on the
            ``small`` preset at LR 0.3 the sampled entropy read 0 where the map's was 0.06, gave
            stable ``qk_norm`` runs false ``entropy_collapse`` alerts and delayed the critical
            ``logit_max`` alert by 5-7 steps (docs/benchmarks.md, "Sampled attention probes").
        lm_head: record ``lm_head.logit_max_abs``/``logz_mean``/``logz_max`` from 64 sampled
            positions of the LM head's logits (cost 64 x vocabulary).
        params: record per-site ``grad_norm`` and ``param_norm`` (two foreach norm passes over
            the parameters per recorded step, after the optimizer step).
        update_stats: also record Adam/AdamW's per-site ``update_rms`` and ``update_ratio``
            (opt-in: six foreach passes over the parameters and the optimizer state per recorded
            step, about +1% of a ``small``-preset CPU step, 1.0 ms of 97; skipped for other
            optimizers).
        n_head: attention heads, when neither the attention modules nor ``model.config`` say.
        start_step: the number of the first step (for resumed runs).

    Only forwards in training mode (``module.training``) are recorded; several forwards in one
    step (gradient accumulation) are aggregated. Use as ``with attach(...) as mon:`` or call
    ``mon.remove()``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"attach: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"attach: every must be a positive integer, got {every!r}")
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"attach: start_step must be a non-negative integer, got {start_step!r}")
    if n_head is not None and (not isinstance(n_head, int) or n_head < 1):
        raise ValueError(f"attach: n_head must be a positive integer, got {n_head!r}")
    if sink is None:
        from trainer_hooks.client import NullSink

        sink = NullSink()
    missing = [m for m in ("write", "flush", "close") if not callable(getattr(sink, m, None))]
    if missing:
        raise TypeError(
            f"attach: sink {type(sink).__name__} lacks {', '.join(missing)}() (see the Sink protocol)"
        )
    if optimizer is not None and not hasattr(optimizer, "param_groups"):
        raise TypeError(f"attach: optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if attn_rows is not None and (
        isinstance(attn_rows, bool) or not isinstance(attn_rows, int) or attn_rows < 1
    ):
        raise ValueError(f"attach: attn_rows must be a positive integer or None, got {attn_rows!r}")
    plan = build_plan(
        model,
        sites=sites,
        logits=logits,
        n_head=n_head,
        attn_rows=attn_rows,
        lm_head=lm_head,
        params=params,
        update_stats=update_stats,
    )
    return Monitor(model, plan, sink, every=every, optimizer=optimizer, reduce=reduce, start_step=start_step)


__all__ = ["attach", "build_plan", "SiteRef"]
