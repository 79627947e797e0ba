"""Failures with a known start: injected incidents and a switch of the data distribution.

A detector's lead time is measured from where a failure begins. For the divergences a high LR
brings on by itself, that is itself a judgement (`stabmon.divergence` dates an onset from the
loss); for an incident injected at a chosen step it is a fact. `Incident` names one of three:

- ``lr_spike(step, factor, steps)``: the optimizer's LR is multiplied by ``factor`` (x10-x100)
  for ``steps`` steps, as a schedule bug or a bad restart would;
- ``corrupt_batches(step, steps, mode)``: ``steps`` batches of garbage, uniformly ``random``
  bytes or one ``repeat``-ed byte (a corrupted shard, a padding bug);
- ``grad_scale(step, factor, steps)``: the gradients are multiplied by ``factor`` before
  clipping (a loss-scaling bug), so the recorded grad norm shows it.

A data switch (`switch_batch`) changes the token distribution abruptly from a step on, built
from the corpus itself with nothing downloaded: ``permute`` relabels every byte by a fixed
permutation (the unigram entropy, hence the plateau of `stabmon.divergence`, is unchanged, but
bytes that were rare become frequent: the embedding rows whose Adam second moments are
smallest suddenly get large gradients, the second-moment mechanism); ``shuffle`` shuffles the
bytes within each sequence (context becomes useless; the unigram distribution is unchanged).

Everything here is a pure function of (seed, step): the normal batch is still drawn and then
replaced, so the sampler's state, and every batch after the incident, is what it would have
been without it; runs without an incident are bit-identical to runs before this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

INCIDENT_KINDS = ("lr_spike", "corrupt_batches", "grad_scale")
CORRUPT_MODES = ("random", "repeat")
DATA_SWITCHES = ("permute", "shuffle")
_SALT = 0x5EED  # keeps incident generators apart from the sampler's (which is seeded by `seed`)


@dataclass(frozen=True)
class Incident:
    """One injected incident: ``kind`` from `INCIDENT_KINDS`, active for optimizer steps
    ``step .. step + steps - 1`` (0-based, indices into the loss history)."""

    kind: str
    step: int
    steps: int = 1
    factor: float = 1.0
    """The LR multiplier (``lr_spike``) or gradient multiplier (``grad_scale``)."""
    mode: str = "random"
    """``corrupt_batches`` only: ``random`` bytes or one ``repeat``-ed byte."""

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(f"unknown incident {self.kind!r}; choose one of {', '.join(INCIDENT_KINDS)}")
        if self.step < 0 or self.steps < 1:
            raise ValueError(f"incident step must be >= 0 and steps >= 1, got {self.step}, {self.steps}")
        if self.kind in ("lr_spike", "grad_scale") and not self.factor > 0:
            raise ValueError(f"{self.kind} factor must be > 0, got {self.factor}")
        if self.mode not in CORRUPT_MODES:
            raise ValueError(f"corrupt_batches mode is one of {', '.join(CORRUPT_MODES)}, got {self.mode!r}")

    def active(self, step: int) -> bool:
        return self.step <= step < self.step + self.steps

    def is_active(self, kind: str, step: int) -> bool:
        return self.kind == kind and self.active(step)

    @classmethod
    def coerce(cls, value: Incident | dict[str, Any] | None) -> Incident | None:
        """An `Incident` from itself or its dict (a JSON config), None from None."""
        if value is None or isinstance(value, Incident):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"an incident is an Incident or a dict, got {type(value).__name__}")


def lr_spike(step: int, factor: float, steps: int = 1) -> Incident:
    return Incident("lr_spike", step, steps, factor=factor)


def corrupt_batches(step: int, steps: int = 1, mode: str = "random") -> Incident:
    return Incident("corrupt_batches", step, steps, mode=mode)


def grad_scale(step: int, factor: float, steps: int = 1) -> Incident:
    return Incident("grad_scale", step, steps, factor=factor)


def _generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) ^ _SALT)


def _rejoin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (B, T+1) windows ``x``/``y`` were cut from."""
    return torch.cat([x.cpu(), y[:, -1:].cpu()], dim=1)


def _split(windows: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return windows[:, :-1].contiguous().to(like.device), windows[:, 1:].contiguous().to(like.device)


def corrupt_batch(
    x: torch.Tensor, y: torch.Tensor, mode: str, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A garbage batch of the shape of (``x``, ``y``): uniform random bytes, or every position
    one byte (drawn per step), as inputs with their next-byte targets."""
    g = _generator(seed, step)
    B, T = x.shape
    if mode == "random":
        windows = torch.randint(256, (B, T + 1), generator=g, dtype=torch.int64)
    elif mode == "repeat":
        windows = torch.full((B, T + 1), int(torch.randint(256, (1,), generator=g)), dtype=torch.int64)
    else:
        raise ValueError(f"mode is one of {', '.join(CORRUPT_MODES)}, got {mode!r}")
    return _split(windows, x)


@lru_cache(maxsize=8)
def byte_permutation(seed: int) -> torch.Tensor:
    """The fixed relabelling of bytes of a ``permute`` switch (a derangement: no byte keeps its
    label, so every token changes). Cached: do not modify it."""
    g = _generator(seed, -1)
    while True:
        perm = torch.randperm(256, generator=g)
        if not bool((perm == torch.arange(256)).any()):
            return perm


def switch_batch(
    x: torch.Tensor, y: torch.Tensor, how: str, seed: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch after a data switch (see the module docstring)."""
    if how == "permute":
        perm = byte_permutation(seed).to(x.device)
        return perm[x], perm[y]
    if how == "shuffle":
        windows = _rejoin(x, y)
        g = _generator(seed, step)
        order = torch.argsort(torch.rand(windows.shape, generator=g), dim=1)
        return _split(torch.gather(windows, 1, order), x)
    raise ValueError(f"data switch is one of {', '.join(DATA_SWITCHES)}, got {how!r}")


def scale_grads(parameters, factor: float) -> None:
    """Multiply every gradient in place (before clipping)."""
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(factor)
