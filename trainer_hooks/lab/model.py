"""A byte-level decoder-only GPT (nanoGPT style) with the norm variants of Rybakov et al. 2024.

The model is what stabmon's experiments train and what its hooks instrument: module names
(``blocks.{i}.attn.qkv``, ``blocks.{i}.attn.proj``, ``blocks.{i}.mlp.fc1``,
``blocks.{i}.mlp.fc2``, ``blocks.{i}.attn.logit_probe``, ...) are a contract with
`trainer_hooks.hooks`. A block is pre-LayerNorm, ``x + Proj(Attn(QKV(LN(x))))`` then
``x + FC2(gelu(FC1(LN(x))))``; `GPTConfig.variant` adds LayerNorms on queries/keys
(``qk_norm``), on the Proj and FC2 outputs (``qk_fc_norm``), on the whole QKV output in place of
the pre-attention LayerNorm (``qkv_norm``), or soft-caps attention logits (``qk_norm_cap``,
``soft_cap``). Each optional norm is an ``Identity`` when its variant does not use it, so the
module tree has the same names in every variant. References: Rybakov et al., "Methods of
improving LLM training stability", arXiv 2410.16682; Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities"; Karpathy, nanoGPT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer_hooks.lab.attention import CausalSelfAttention
from trainer_hooks.lab.config import GPTConfig


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.fc1 = nn.Linear(d, 4 * d, bias=config.bias)
        self.fc2 = nn.Linear(4 * d, d, bias=config.bias)
        self.fc2_norm = (
            nn.LayerNorm(d, eps=config.ln_eps, bias=config.bias) if config.spec.out_norm else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2_norm(self.fc2(F.gelu(self.fc1(x)))))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.n_embd
        # qkv_norm moves the attention-side normalisation onto the QKV output.
        self.ln_1 = (
            nn.LayerNorm(d, eps=config.ln_eps, bias=config.bias) if config.spec.pre_attn_ln else nn.Identity()
        )
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(d, eps=config.ln_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.block_size, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d, eps=config.ln_eps, bias=config.bias)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying

        self.apply(self._init_weights)
        # GPT-2: residual projections get std 0.02 / sqrt(2 * n_layer), so the residual
        # stream's variance does not grow with depth at init.
        resid_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.normal_(p, mean=0.0, std=resid_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position embedding is excluded by default (as in nanoGPT) and the
        token embedding is counted once, being tied to ``lm_head``."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.pos_emb.weight.numel()
        return n

    def set_record_attention(self, on: bool) -> None:
        """Make every attention layer take (or leave) the explicit, probe-calling path."""
        for block in self.blocks:
            block.attn.record_attention = on

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx``: (B, T) byte ids; returns logits (B, T, vocab) and the mean cross-entropy
        against ``targets`` (B, T) in float32, or None without targets."""
        B, T = idx.shape
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T))
        return logits, loss
