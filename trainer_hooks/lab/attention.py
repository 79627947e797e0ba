"""Causal self-attention with the norm and capping variants of Rybakov et al. 2024.

`CausalSelfAttention` reads its `VariantSpec` once in the constructor: every optional
LayerNorm is either a `LayerNorm` or an `Identity`, and the logit cap is a `SoftCap` or an
`Identity`, so `forward` has no per-variant branches. Two code paths compute the same thing:
the fast one calls `scaled_dot_product_attention(is_causal=True)`; the explicit one
materialises the (B, nh, T, T) logits and probabilities, which the capping variants need
(SDPA cannot express a cap). Either way, the logits and probabilities pass through two
`AttentionProbe` modules, so forward hooks (stabmon's monitoring) can see attention logit
maxima and entropies, when `record_attention` is set (the hooks set it on the steps they
record) and the module is training. What the probes see is a sample: `probe_rows` query rows
of one sequence against all its keys, (1, nh, S, T), the rows strided over the context and
rotated from step to step by a device counter (`trainer_hooks.hooks.stats.probe_index`). On
the fast path those rows are recomputed outside autograd (nh * S * T * hs multiply-adds: fixed in
B, linear in T), on the explicit path sliced out of the logits the layer computed anyway;
`probe_rows = None` shows the whole (B, nh, T, T) map instead (exact, and on the fast path a
full forward-only matmul and softmax per layer, ~15% of a CPU step). A third probe,
`qk_probe`, sees `(q, k)` as the attention uses them, for the bound max|q| max|k| / sqrt(hs)
over every token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer_hooks.hooks.stats import probe_index
from trainer_hooks.lab.config import GPTConfig

PROBE_ROWS = 16
"""Query rows per recorded forward that the attention probes see (None: all of them)."""


class AttentionProbe(nn.Module):
    """Returns its input unchanged. Exists only as an attachment point for forward hooks."""

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return x


class SoftCap(nn.Module):
    """Softmax capping, z -> c * tanh(z / c): logits stay in (-c, c) whatever their size,
    which bounds how peaked attention can become (the cap of Gemma 2 / Grok)."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        if not cap > 0:
            raise ValueError(f"cap must be > 0, got {cap}")
        self.cap = float(cap)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.cap * torch.tanh(z / self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


def _layer_norm(enabled: bool, dim: int, config: GPTConfig) -> nn.Module:
    return nn.LayerNorm(dim, eps=config.ln_eps, bias=config.bias) if enabled else nn.Identity()


class CausalSelfAttention(nn.Module):
    record_attention: bool = False
    """When True (and training), the probes see the attention (outside autograd)."""
    probe_rows: int | None = PROBE_ROWS
    """Query rows of one sequence shown to the probes per recorded forward; None: the whole map."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        spec = config.spec
        d = config.n_embd
        self.n_head = config.n_head
        self.n_embd = d
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.record_attention = False

        self.qkv = nn.Linear(d, 3 * d, bias=config.bias)  # q|k|v concatenated in that order
        self.qkv_norm = _layer_norm(spec.qkv_norm, 3 * d, config)
        # nn.LayerNorm normalises the last dimension, so on (B, nh, T, hs) it is per head.
        self.q_norm = _layer_norm(spec.qk_norm, self.head_dim, config)
        self.k_norm = _layer_norm(spec.qk_norm, self.head_dim, config)
        self.logit_cap = SoftCap(config.softmax_cap) if spec.softmax_cap else nn.Identity()
        self.caps_logits = spec.softmax_cap
        self.logit_probe = AttentionProbe()
        self.prob_probe = AttentionProbe()
        self.qk_probe = AttentionProbe()
        # Rotates the probes' sample (sequence and row offset); advanced on the device, so it
        # costs no sync and torch.compile sees a tensor, not a Python int that changes per step.
        self.register_buffer("probe_step", torch.zeros((), dtype=torch.long), persistent=False)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(d, d, bias=config.bias)
        self.proj_norm = _layer_norm(spec.out_norm, d, config)
        self.resid_dropout = nn.Dropout(config.dropout)
        # True above the diagonal: the future positions a query may not attend to.
        self.register_buffer(
            "future_mask",
            torch.ones(config.block_size, config.block_size, dtype=torch.bool).triu(1),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv_norm(self.qkv(x))  # (B, T, 3C)
        q, k, v = qkv.split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        q, k = self.q_norm(q), self.k_norm(k)

        probe = self.record_attention and self.training
        if self.caps_logits:
            y = self._explicit_attention(q, k, v, probe)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
            if probe:
                with torch.no_grad():
                    self._probe_attention(q, k)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj_norm(self.proj(y)))

    def _masked_logits(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q.k / sqrt(hs) with the future masked to -inf, (B, nh, T, T), and the mask."""
        T = q.size(-2)
        mask = self.future_mask[:T, :T]
        logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, nh, T, T)
        return logits.masked_fill(mask, float("-inf")), mask

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, probe: bool
    ) -> torch.Tensor:
        logits, mask = self._masked_logits(q, k)
        # tanh maps the masked -inf to -c, so mask again after capping.
        capped = self.logit_cap(logits).masked_fill(mask, float("-inf"))
        probs = F.softmax(capped, dim=-1)  # (B, nh, T, T)
        if probe:
            with torch.no_grad():
                self.qk_probe((q, k))
                b, rows = self._probe_sample(q)
                if b is None:
                    self.logit_probe(logits.detach())
                    self.prob_probe(probs.detach())
                else:  # slices of what this path computed anyway: (1, nh, S, T)
                    self.logit_probe(logits.detach().index_select(0, b).index_select(2, rows))
                    self.prob_probe(probs.detach().index_select(0, b).index_select(2, rows))
        return self.attn_dropout(probs) @ v  # (B, nh, T, hs)

    def _probe_sample(self, q: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(sequence (1,), query rows (S,)) the probes see this forward, or (None, None) for all."""
        if self.probe_rows is None:
            return None, None
        b, rows = probe_index(self.probe_step, q.size(0), q.size(-2), self.probe_rows)
        self.probe_step.add_(1)
        return b, rows

    def _probe_attention(self, q: torch.Tensor, k: torch.Tensor) -> None:
        """Show the probes what the fast path computed implicitly (no cap on this path)."""
        self.qk_probe((q, k))
        b, rows = self._probe_sample(q)
        if b is None:
            logits = self._masked_logits(q, k)[0]  # (B, nh, T, T)
        else:
            qs = q.index_select(0, b).index_select(2, rows)  # (1, nh, S, hs)
            ks = k.index_select(0, b)  # (1, nh, T, hs)
            future = torch.arange(k.size(-2), device=k.device) > rows[:, None]  # (S, T)
            logits = ((qs @ ks.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))).masked_fill(
                future, float("-inf")
            )  # (1, nh, S, T)
        self.logit_probe(logits)
        self.prob_probe(F.softmax(logits, dim=-1))
