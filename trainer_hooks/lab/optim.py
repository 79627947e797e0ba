"""The optimizer and the learning-rate schedule of the training loop.

AdamW with nanoGPT's parameter groups: weight decay on every parameter with two or more
dimensions (the Linear matrices and the tied embedding), none on biases and LayerNorm
parameters, which are 1-D and whose decay only pulls normalisation gains towards zero.
The schedule is a linear warmup to the peak LR followed by a cosine decay to ``min_lr``; the
LR sweep of the experiments varies the peak, and Rybakov et al. show the norm variants let
that peak go 1.5x-10x higher before divergence.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, undecayed vectors. Tied weights appear once."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused CUDA kernel where available."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    kwargs = {}
    if device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def lr_at(step: int, peak_lr: float, warmup: int, total_steps: int, min_lr: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps
    (step 0 already gets peak/warmup, never 0), then cosine from ``peak_lr`` to ``min_lr`` at
    ``total_steps``; ``min_lr`` after that."""
    if warmup > 0 and step < warmup:
        return peak_lr * (step + 1) / warmup
    if step >= total_steps:
        return min_lr
    span = max(total_steps - warmup, 1)
    progress = (step - warmup) / span  # in [0, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
