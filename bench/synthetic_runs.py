"""Realistic synthetic training series for the dashboard tests and the render benchmark (here, in
bench/, because the tests may import the benchmarks but the benchmarks never import the tests).

A run is ``layers`` transformer blocks with output norms at ``qkv``/``proj``/``fc1``/``fc2``
(or any ``sites``; ``l2_mean`` and ``l2_max``), attention-logit maxima and entropies, plus loss, learning rate
and grad norm. A healthy run's loss decays and its norms drift slowly upwards with depth. A
diverging run follows the pattern of Rybakov et al. (2024) and Wortsman et al. (2023): from
``diverge_at - onset`` steps the deeper layers' QKV/Proj/FC2 norms and attention logits grow
exponentially step after step (logits past 1e4), the attention entropy collapses, the grad
norm spikes, and at ``diverge_at`` the loss becomes NaN. Deterministic per ``seed``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

SITES = ("qkv", "proj", "fc1", "fc2")


@dataclass(frozen=True)
class RunShape:
    steps: int = 300
    layers: int = 4
    diverge_at: int | None = None
    onset: int = 60
    """Steps before ``diverge_at`` at which the norm and logit growth starts."""
    peak_lr: float = 3e-3
    warmup: int = 20
    seed: int = 0
    entropy: bool = True
    l2_max: bool = True
    sites: tuple[str, ...] = SITES
    """Norm sites per layer; e.g. ``("q", "k", "v", "proj", "fc1", "fc2")`` for separate projections."""

    def series_count(self) -> int:
        per_layer = len(self.sites) * (2 if self.l2_max else 1) + 1 + (1 if self.entropy else 0)
        return self.layers * per_layer + 3


def _lr(shape: RunShape, step: int) -> float:
    if step < shape.warmup:
        return shape.peak_lr * (step + 1) / shape.warmup
    t = (step - shape.warmup) / max(1, shape.steps - shape.warmup)
    return shape.peak_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def point_values(shape: RunShape, step: int, rng: random.Random) -> dict[str, float | str]:
    """All series values of one step (non-finite values wire-encoded as strings)."""
    div = shape.diverge_at
    start = None if div is None else div - shape.onset
    # Growth factor of the unstable layers: 1 before the onset, then e-fold every ~6 steps.
    grow = 1.0 if start is None or step < start else math.exp(min(step - start, 400) / 6.0)
    diverged = div is not None and step >= div
    vals: dict[str, float | str] = {}
    loss = 3.2 + 7.6 * math.exp(-step / 70.0) + rng.gauss(0, 0.04)
    if start is not None and step >= start:
        loss += 0.02 * (grow - 1.0) ** 0.5
    vals["loss"] = "nan" if diverged else loss
    vals["lr"] = _lr(shape, step)
    g = 1.1 + 0.5 * math.exp(-step / 50.0) + abs(rng.gauss(0, 0.08))
    vals["grad_norm"] = "inf" if diverged else g * grow**0.7
    for i in range(shape.layers):
        depth = 1.0 + 0.35 * i
        # Deeper layers blow up first and hardest.
        layer_grow = grow ** (0.4 + 0.6 * i / max(1, shape.layers - 1))
        for j, site in enumerate(shape.sites):
            base = (4.0 + 3.0 * j) * depth * (1.0 + step / (4.0 * shape.steps)) * (1 + rng.gauss(0, 0.02))
            unstable = site in ("qkv", "q", "k", "v", "proj", "fc2")
            v = base * (layer_grow if unstable else layer_grow**0.3)
            if diverged:
                vals[f"layer.{i}.{site}.l2_mean"] = "inf" if unstable else "nan"
            else:
                vals[f"layer.{i}.{site}.l2_mean"] = v
            if shape.l2_max:
                vals[f"layer.{i}.{site}.l2_max"] = "inf" if diverged else v * (2.0 + 0.2 * rng.random())
        logit = (6.0 + 2.5 * i) * (1 + 0.3 * step / shape.steps) * (1 + rng.gauss(0, 0.03)) * layer_grow**1.4
        vals[f"layer.{i}.attn.logit_max"] = "inf" if diverged else logit
        if shape.entropy:
            ent = 2.8 - 0.4 * step / shape.steps - 0.1 * i
            ent = ent / layer_grow**0.8
            vals[f"layer.{i}.attn.entropy_mean"] = "nan" if diverged else max(ent, 1e-4)
    return vals


def points(shape: RunShape, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Wire-format points (``{"step", "values"}``) for steps [start, stop)."""
    stop = shape.steps if stop is None else stop
    for step in range(start, stop):
        rng = random.Random(shape.seed * 1_000_003 + step)
        yield {"step": step, "values": point_values(shape, step, rng)}


def batches(shape: RunShape, size: int, start: int = 0, stop: int | None = None) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for p in points(shape, start, stop):
        batch.append(p)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
