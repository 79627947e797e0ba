"""Per-step accumulation of hook statistics on the device, and the one host transfer per step.

Hooks append small float32 tensors together with the integer ids of the series they belong to
(:meth:`StepAccumulator.add`); nothing is reduced or copied while the forward runs. At the end
of a step :meth:`StepAccumulator.finish` concatenates them and reduces duplicates on the device
(several forwards in one step, i.e. gradient accumulation, or activation-checkpoint recompute):
the max of maxima for ``*_max``/``logit_*`` series, the mean of means for ``*_mean`` series.
*Root* series (:data:`ROOT`: the parameter statistics of a sharded model, FSDP2) carry partial sums
of squares that add up over ranks, reduced with a sum; their value is ``sqrt(sum)``, or
``sqrt(sum / sum of a denominator series)`` for ratios, whose denominators are hidden series.
:class:`HostTransfer` then moves the packed vector to the host once: on CPU directly, on CUDA
with a non-blocking copy into pinned memory and an event, read back at a later step when the
event has completed, so the training thread never waits for the device.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

MAX, MEAN, ROOT = 0, 1, 2


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without blocking the host: a plain pageable copy to
    CUDA synchronises the stream, a pinned one with ``non_blocking=True`` does not."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def kind_of(stat: str) -> int:
    """How a statistic aggregates over forwards and ranks: means and per-head minima
    (``entropy_min_head``) average, everything else maxes."""
    return MEAN if stat.endswith("_mean") or "_min" in stat else MAX


class StepAccumulator:
    """Collects ``(series ids, values)`` pairs during a step; reduces them on the device."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._ids: dict[str, int] = {}
        self._kinds: list[int] = []
        self._vals: list[torch.Tensor] = []
        self._idx: list[int] = []
        self.device: torch.device | None = None
        """Where the step's statistics are combined: the device of the first hook's output."""
        # (tuple of ids) -> (index tensor, counts tensor): the layout repeats every step.
        self._layout_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._is_max: torch.Tensor | None = None
        self._den: dict[int, int] = {}  # ratio root series -> its denominator series
        self.hidden: set[int] = set()
        """Series that are combined but never emitted (ratio denominators)."""
        self._root: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def register(
        self, key: str, kind: int | None = None, den: str | None = None, hidden: bool = False
    ) -> int:
        """The id of series ``key``, created with ``kind`` (default :func:`kind_of` its name); a
        :data:`ROOT` series with ``den`` is ``sqrt(its sum / the sum of series den)``."""
        if key not in self._ids:
            self._ids[key] = len(self.keys)
            self.keys.append(key)
            self._kinds.append(kind_of(key.rsplit(".", 1)[-1]) if kind is None else kind)
            if den is not None:
                self._den[self._ids[key]] = self.register(den, ROOT, hidden=True)
            if hidden:
                self.hidden.add(self._ids[key])
            self._is_max = self._root = None
            self._layout_cache.clear()
        return self._ids[key]

    @property
    def has_root(self) -> bool:
        return ROOT in self._kinds

    def add(self, ids: tuple[int, ...], vals: torch.Tensor) -> None:
        """Record ``vals`` (len(ids),) for series ``ids``. Called from hooks: no host sync, and
        no state read that torch.compile would have to guard on (the list appends are replayed)."""
        self._vals.append(vals)
        self._idx.extend(ids)

    @property
    def empty(self) -> bool:
        return not self._vals

    def clear(self) -> None:
        self._vals.clear()
        self._idx.clear()

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(maxes, sums, counts)``, each (n_keys,) on the device, and clear; None if empty.

        ``maxes`` holds the max of every series' values (-inf where absent), ``sums`` their sum,
        ``counts`` how many values each series got. :func:`combine` turns them into values.
        """
        if not self._vals:
            return None
        layout = tuple(self._idx)
        if self.device is None:
            self.device = self._vals[0].device
        # A model split over devices: gather on the first one (device-to-device, async).
        vals = torch.cat(
            [v if v.device == self.device else v.to(self.device, non_blocking=True) for v in self._vals]
        )
        self.clear()
        cached = self._layout_cache.get(layout)
        if cached is None:
            n = len(self.keys)
            counts = [0] * n
            for i in layout:
                counts[i] += 1
            cached = (
                to_device(torch.tensor(layout, dtype=torch.long), vals.device),
                to_device(torch.tensor(counts, dtype=torch.float32), vals.device),
            )
            if len(self._layout_cache) > 64:  # layouts vary only in odd loops; stay bounded
                self._layout_cache.clear()
            self._layout_cache[layout] = cached
        idx, counts_t = cached
        n = len(self.keys)
        maxes = torch.full((n,), -math.inf, device=vals.device).scatter_reduce_(0, idx, vals, "amax")
        sums = torch.zeros(n, device=vals.device).index_add_(0, idx, vals)
        return maxes, sums, counts_t

    def is_max(self, device: torch.device) -> torch.Tensor:
        if self._is_max is None or self._is_max.device != device:
            self._is_max = to_device(torch.tensor([k == MAX for k in self._kinds], dtype=torch.bool), device)
        return self._is_max

    def root_layout(
        self, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(root-kind mask, ratio mask, denominator index, root-kind indices), cached per device."""
        if self._root is None or self._root[0].device != device:
            n = len(self.keys)
            self._root = (
                to_device(torch.tensor([k == ROOT for k in self._kinds], dtype=torch.bool), device),
                to_device(torch.tensor([i in self._den for i in range(n)], dtype=torch.bool), device),
                to_device(torch.tensor([self._den.get(i, i) for i in range(n)], dtype=torch.long), device),
                to_device(
                    torch.tensor([i for i in range(n) if self._kinds[i] == ROOT], dtype=torch.long), device
                ),
            )
        return self._root

    def combine(self, maxes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Per-series value: the max for max-kind series, ``sum / count`` for mean-kind ones,
        ``sqrt(sum)`` (or ``sqrt(sum / denominator's sum)``) for root-kind ones."""
        out = torch.where(self.is_max(maxes.device), maxes, sums / counts.clamp(min=1.0))
        if not self.has_root:
            return out
        is_root, is_ratio, den, _ = self.root_layout(sums.device)
        root = torch.where(is_ratio, sums / sums.index_select(0, den), sums).sqrt()
        return torch.where(is_root, root, out)


class HostTransfer:
    """Moves one packed float32 vector per emitted step to the host, without stalling on CUDA.

    ``submit(vec, meta)`` starts the copy; ``ready()`` yields ``(meta, floats)`` for every copy
    that has completed, oldest first; ``drain()`` waits for all of them (used by flush/remove).
    On CPU the copy happens when the result is read (one ``tolist()``). On CUDA the vector is
    copied with ``non_blocking=True`` into a reused pinned buffer and an event is recorded; at
    most ``max_pending`` copies stay in flight, beyond that the oldest is waited for (a device
    that many emitted steps behind the host is already throttled by the allocator anyway).
    """

    def __init__(self, max_pending: int = 4) -> None:
        self.max_pending = max_pending
        # (event or None, host-side tensor, meta), oldest first
        self._pending: deque[tuple[Any, torch.Tensor, Any]] = deque()
        self._done: list[tuple[Any, list[float]]] = []
        self._free: dict[int, list[torch.Tensor]] = {}

    def submit(self, vec: torch.Tensor, meta: Any) -> None:
        if vec.device.type != "cuda":
            self._pending.append((None, vec, meta))
            return
        n = vec.numel()
        pool = self._free.setdefault(n, [])
        host = pool.pop() if pool else torch.empty(n, dtype=vec.dtype, pin_memory=True)
        host.copy_(vec, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, host, meta))
        while len(self._pending) > self.max_pending:
            self._pending[0][0].synchronize()
            self._done.append(self._pop())

    def _pop(self) -> tuple[Any, list[float]]:
        event, host, meta = self._pending.popleft()
        floats = host.tolist()  # CPU: the step's one device->host transfer; CUDA: pinned memory
        if event is not None:
            self._free.setdefault(host.numel(), []).append(host)
        return meta, floats

    def ready(self) -> Iterator[tuple[Any, list[float]]]:
        done, self._done = self._done, []
        yield from done
        while self._pending and (self._pending[0][0] is None or self._pending[0][0].query()):
            yield self._pop()

    def drain(self) -> Iterator[tuple[Any, list[float]]]:
        done, self._done = self._done, []
        yield from done
        while self._pending:
            if self._pending[0][0] is not None:
                self._pending[0][0].synchronize()
            yield self._pop()

    def __len__(self) -> int:
        return len(self._pending) + len(self._done)
