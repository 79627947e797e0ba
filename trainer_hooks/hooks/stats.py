"""On-device statistics of the tensors that the forward hooks see.

Every function here takes a module's output (or an attention probe's tensor), detaches it,
computes in float32 under ``torch.no_grad()`` and returns a small float32 tensor on the same
device: nothing is moved to the host, nothing calls ``.item()``, so the hooks never force a
device synchronisation. The monitor stacks these results and moves them to the host once per
emitted step. Each function is also the reference definition of its statistic, which the tests
check against a direct computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

_TINY = 1e-30


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32)


@torch.no_grad()
def token_l2(x: torch.Tensor) -> torch.Tensor:
    """``[mean, max]`` over tokens of the per-token L2 norm of ``x`` (..., d).

    One fused norm over the last dimension of the whole (B*T, d) tensor, then one mean and
    one max of the (B*T,) norms. NaN/inf in ``x`` propagate into both values (that is data).
    """
    n = torch.linalg.vector_norm(_f32(x).reshape(-1, x.shape[-1]), dim=-1)  # (B*T,)
    return torch.stack((n.mean(), n.amax()))


@torch.no_grad()
def fused_qkv_logit_max(qkv: torch.Tensor, n_head: int, scale: float | None = None) -> torch.Tensor:
    """Largest causal attention logit ``max |q.k| * scale`` from a fused q|k|v projection.

    ``qkv`` is (B, T, 3d), laid out q | k | v along the last dimension as in nanoGPT's
    ``c_attn`` and GPT-2's ``Conv1D``; heads are contiguous slices of ``hs = d / n_head``.
    ``scale`` defaults to ``1/sqrt(hs)``. Only valid for models without rotary embeddings
    (the logits are exactly what the attention computes before masking and softmax).
    Returns a 0-d tensor.
    """
    B, T, three_d = qkv.shape
    d = three_d // 3
    hs = d // n_head
    if scale is None:
        scale = 1.0 / math.sqrt(hs)
    q, k = _f32(qkv)[..., : 2 * d].split(d, dim=-1)
    q = q.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = k.view(B, T, n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
    z = torch.matmul(q, k.transpose(-2, -1)).abs_()  # (B, nh, T, T)
    # Future positions never reach the softmax: drop them (|z| >= 0, so 0 cannot win the max
    # unless every logit is 0).
    future = torch.ones(T, T, dtype=torch.bool, device=z.device).triu_(1)
    return z.masked_fill_(future, 0.0).amax() * scale


@torch.no_grad()
def probe_logit_max(z: torch.Tensor) -> torch.Tensor:
    """Largest ``|logit|`` of an attention-logit probe (B, nh, T, T), ignoring masked entries.

    The probe carries the logits already scaled by 1/sqrt(hs) and before any cap, with masked
    (future) entries set to -inf; those are excluded. A genuine NaN or +inf still propagates.
    ``max(amax(z), -amin(z'))`` with ``z'`` = z whose -inf entries read 0: two vectorised
    reductions and one pass, several times cheaper than ``where(z == -inf, 0, |z|).amax()``.
    Returns a 0-d tensor.
    """
    z = _f32(z)
    lowest = torch.nan_to_num(z, nan=math.nan, posinf=math.inf, neginf=0.0).amin()
    return torch.maximum(z.amax(), -lowest)


@torch.no_grad()
def probe_logit_rows(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`probe_logit_max` plus what :func:`entropy_from_logits` reuses.

    Returns ``(logit max (0-d), z0 = z with -inf read as 0 (B, nh, T, T), row max of z (B, nh, T))``.
    """
    z = _f32(z)
    z0 = torch.nan_to_num(z, nan=math.nan, posinf=math.inf, neginf=0.0)
    row_max = z.amax(dim=-1)  # (B, nh, T)
    return torch.maximum(row_max.amax(), -z0.amin()), z0, row_max


@torch.no_grad()
def entropy_from_logits(
    p: torch.Tensor,
    z0: torch.Tensor,
    row_max: torch.Tensor,
    cap: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """Mean attention entropy from the probabilities and the pre-cap logits, without a log per entry.

    With ``zc = cap(z)`` the logits the softmax saw, ``log p_ij = zc_ij - lse_i``, so
    ``H_i = lse_i - sum_j p_ij zc_ij``; and at the row's largest entry (never tiny: >= 1/T)
    ``lse_i = max_j zc_ij - log max_j p_ij``, where ``max_j zc_ij = cap(max_j z_ij)`` because a cap
    is increasing. Masked entries have ``p = 0`` and ``z0 = cap(0) = 0``: they contribute nothing.
    ``cap`` is None (no cap) or an increasing function with ``cap(0) = 0`` (``c tanh(z / c)``).
    Costs one multiply-add pass over (B, nh, T, T) (plus one ``cap`` pass if capped) instead of a
    ``log`` per entry. Returns a 0-d tensor.
    """
    p = _f32(p)
    zc0, zc_max = (z0, row_max) if cap is None else (cap(z0), cap(row_max))
    h = zc_max - p.amax(dim=-1).log() - torch.linalg.vecdot(p, zc0)  # (B, nh, T)
    return h.mean()


@torch.no_grad()
def entropy_mean(p: torch.Tensor) -> torch.Tensor:
    """Mean attention entropy ``-sum_j p log p`` over batch, heads and query positions.

    ``p`` is the softmax output (B, nh, T, T). Masked entries are exact zeros; ``log`` reads
    them as ``_TINY`` (a normal float32), so they contribute ``0 * log(1e-30) = 0`` instead of
    ``0 * log 0 = nan``, and any ``p < 1e-30`` is off by less than 1e-28: exact at float32
    precision. (``log(0)`` and ``torch.special.entr`` take slow scalar paths on CPU, ~4x
    slower.) A NaN in ``p`` propagates. Returns a 0-d tensor.
    """
    p = _f32(p)
    t = p.clamp_min(_TINY).log_().mul_(p)  # one temporary, updated in place: p log p
    return t.sum() / (-(p.numel() // p.shape[-1]))  # the mean over (B, nh, T) rows of the row sums


@torch.no_grad()
def head_norm_max(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Per-head max over tokens of the per-head L2 norm of a q or k projection output.

    ``x`` is (B, T, n_head * hs); returns (n_head,).
    """
    B, T, d = x.shape
    n = torch.linalg.vector_norm(_f32(x).view(B * T, n_head, d // n_head), dim=-1)  # (B*T, nh)
    return n.amax(dim=0)


@torch.no_grad()
def token_l2_heads(x: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_l2` and :func:`head_norm_max` of a q or k output (..., n_head * hs) in one pass:
    a token's L2 norm is the norm of its heads' norms. Returns ((2,), (n_head,))."""
    n = torch.linalg.vector_norm(_f32(x).reshape(-1, n_head, x.shape[-1] // n_head), dim=-1)  # (B*T, nh)
    tok = torch.linalg.vector_norm(n, dim=-1)  # (B*T,)
    return torch.stack((tok.mean(), tok.amax())), n.amax(dim=0)


@torch.no_grad()
def rotary_logit_bound(q_max: torch.Tensor, k_max: torch.Tensor, scale: float) -> torch.Tensor:
    """Upper bound on ``max |q.k| * scale`` for attention with rotary embeddings.

    A rotation keeps each head's vector norm, so ``|q_rot . k_rot| <= |q| |k|``: the bound is
    ``max_h max|q_h| * max|k_g(h)| * scale``, where query head ``h`` reads key head
    ``g(h) = h // (n_q / n_kv)`` (grouped-query attention). ``q_max`` is (n_q,), ``k_max``
    (n_kv,), as returned by :func:`head_norm_max`. Returns a 0-d tensor.
    """
    groups = q_max.shape[0] // k_max.shape[0]
    return (q_max * k_max.repeat_interleave(groups)).amax() * scale


# ---------------------------------------------------------------------------------------------
# Sampled attention rows, per-head entropy, residual stream, LM head.
# ---------------------------------------------------------------------------------------------
def probe_index(counter: torch.Tensor, B: int, T: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which query rows a sampled attention probe looks at: ``(sequence (1,), rows (S,))``.

    ``S = min(rows, T)`` query positions of one sequence, strided by ``T // S`` from an offset in
    ``[0, T // S)``; ``counter`` (a 0-d long tensor on the device, advanced once per recorded
    step) rotates the sequence every step and the offset every ``B`` steps, so over steps every
    sequence slot and every position is seen. Pure device arithmetic: no sync, and under
    ``torch.compile`` no guard on a Python value that changes every step.
    """
    S = min(rows, T)
    stride = T // S
    b = (counter % B).reshape(1)
    off = torch.div(counter, B, rounding_mode="floor") % stride
    return b, torch.arange(S, device=counter.device) * stride + off


def causal_rows_logits(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits of the sampled query rows against every key, future keys at -inf, in float32.

    ``q`` is (nh, S, hs) (the rows ``rows`` (S,) of one sequence), ``k`` (nh_kv, T, hs); returns
    (1, nh, S, T). Costs ``nh * S * T * hs`` multiply-adds: fixed in B, linear in T.
    """
    groups = q.shape[0] // k.shape[0]  # grouped-query attention: query head h reads key head h // groups
    k = _f32(k).repeat_interleave(groups, dim=0) if groups > 1 else _f32(k)
    z = torch.matmul(_f32(q), k.transpose(-2, -1)).mul_(scale)  # (nh, S, T)
    future = torch.arange(k.shape[-2], device=z.device) > rows[:, None]  # (S, T)
    return z.masked_fill_(future, -math.inf).unsqueeze(0)


@torch.no_grad()
def head_entropy(p: torch.Tensor) -> torch.Tensor:
    """``[mean, min over heads of the head's mean]`` attention entropy of probabilities (B, nh, S, T).

    The mean over all rows hides one head collapsing onto a single key while the others stay
    diffuse; the per-head minimum shows it. Zeros (masked keys) contribute 0 (see
    :func:`entropy_mean`). Returns (2,).
    """
    p = _f32(p)
    h = p.clamp_min(_TINY).log_().mul_(p).sum(-1).neg_()  # (B, nh, S): entropy per row
    per_head = h.mean(dim=(0, 2))  # (nh,)
    return torch.stack((per_head.mean(), per_head.amin()))


@torch.no_grad()
def fused_qkv_sampled(
    qkv: torch.Tensor, n_head: int, scale: float | None, b: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """``[logit max, entropy mean, entropy min over heads]`` from sampled rows of a fused q|k|v output.

    ``qkv`` is (B, T, 3d) as in :func:`fused_qkv_logit_max`; only sequence ``b`` (1,) is read,
    its query rows ``rows`` (S,) against all its keys, so the cost is fixed in B and linear in T.
    The logits are exact (no rotary embedding) and the entropy is that of their causal softmax.
    Returns (3,).
    """
    B, T, three_d = qkv.shape
    d = three_d // 3
    hs = d // n_head
    x = qkv.detach().index_select(0, b)[0]  # (T, 3d): one sequence
    q = x[:, :d].index_select(0, rows).view(-1, n_head, hs).transpose(0, 1)  # (nh, S, hs)
    k = x[:, d : 2 * d].view(T, n_head, hs).transpose(0, 1)  # (nh, T, hs)
    z = causal_rows_logits(q, k, rows, scale if scale is not None else 1.0 / math.sqrt(hs))
    return torch.cat((probe_logit_max(z).reshape(1), head_entropy(torch.softmax(z, dim=-1))))


@torch.no_grad()
def qk_logit_bound(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``max_h max|q_h| max|k_h| * scale`` over every token of q, k (B, nh, T, hs): an upper bound
    on the logits that the sampled rows cannot miss. Two norm passes over q and k. Returns a 0-d tensor."""
    qn = torch.linalg.vector_norm(_f32(q), dim=-1).amax(dim=(0, 2))  # (nh,)
    kn = torch.linalg.vector_norm(_f32(k), dim=-1).amax(dim=(0, 2))  # (nh_kv,)
    return rotary_logit_bound(qn, kn, scale)


@torch.no_grad()
def qkv_l2_and_bound(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """``[l2 mean, l2 max, q/k logit bound]`` of a fused q|k|v output (B, T, 3d), in one pass.

    The per-head norms (B*T, 3 nh) give both the per-token L2 norm of the whole output (the norm
    of its heads' norms, as :func:`token_l2`) and ``max_h max|q_h| max|k_h| / sqrt(hs)`` (as
    :func:`qk_logit_bound`), for attention that uses q and k as projected. Returns (3,).
    """
    d = qkv.shape[-1] // 3
    n = torch.linalg.vector_norm(_f32(qkv).reshape(-1, 3 * n_head, d // n_head), dim=-1)  # (B*T, 3nh)
    tok = torch.linalg.vector_norm(n, dim=-1)  # (B*T,)
    heads = n[:, : 2 * n_head].amax(dim=0)  # (2nh,): q heads, then k heads
    bound = (heads[:n_head] * heads[n_head:]).amax() * (n_head / d) ** 0.5
    return torch.stack((tok.mean(), tok.amax(), bound))


@torch.no_grad()
def max_abs(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` over the whole tensor (the residual stream (B, T, d)). Returns (1,).

    ``abs().amax()``: two vectorised passes; ``vector_norm(ord=inf)`` takes a scalar path on CPU
    (~20x slower)."""
    return _f32(x).abs().amax().reshape(1)


@torch.no_grad()
def lm_head_sampled(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``[max |z|, mean log Z, max log Z]`` of the LM-head logits at sampled positions.

    ``logits`` is (..., V); ``positions`` (S,) index its flattened leading dimensions. ``log Z``
    is the log-partition ``logsumexp_v z_v`` of a position: it drifts upward when the output
    layer's logits grow (the z-loss of PaLM penalises its square). Costs S * V. Returns (3,).
    """
    z = _f32(logits.detach().reshape(-1, logits.shape[-1]).index_select(0, positions))  # (S, V)
    lse = torch.logsumexp(z, dim=-1)  # (S,)
    top = torch.linalg.vector_norm(z, ord=math.inf).reshape(1)
    return torch.cat((top, lse.mean().reshape(1), lse.amax().reshape(1)))


def strided_positions(counter: torch.Tensor, n: int, count: int) -> torch.Tensor:
    """``min(count, n)`` indices into ``n`` flattened positions, strided by ``n // count`` from an
    offset that ``counter`` (0-d long, on the device) rotates step by step. Returns (S,)."""
    S = min(count, n)
    stride = n // S
    return torch.arange(S, device=counter.device) * stride + counter % stride
