"""Rank discovery and the cross-rank reduction of one step's statistics.

With ``torch.distributed`` initialised every record carries the process's rank. With
``attach(..., reduce=True)`` each rank packs its step into one float32 vector
``[maxes | sums | counts | scalars]`` and a single ``all_gather`` exchanges it; every rank then
combines on the device (max of maxima, sum of sums and counts, mean of run-level scalars) and
rank 0 alone emits the record. One collective per emitted step, sized a few KB, with no host
synchronisation; like any collective it must be reached by every rank at the same step, with
the same run-level keywords passed to ``step()``.
"""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def all_gather_vector(vec: torch.Tensor, world: int) -> torch.Tensor:
    """Stack ``vec`` (n,) from every rank into (world, n) with one collective."""
    import torch.distributed as dist

    out = torch.empty(world, vec.numel(), dtype=vec.dtype, device=vec.device)
    if dist.get_backend() == "nccl":
        dist.all_gather_into_tensor(out, vec.contiguous())
    else:  # gloo has no all_gather_into_tensor for every build; the list form is equivalent
        dist.all_gather(list(out.unbind(0)), vec.contiguous())
    return out


def reduce_step(
    maxes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, scalars: torch.Tensor, world: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine one step across ranks: max of ``maxes``, sum of ``sums``/``counts``, mean of ``scalars``.

    All inputs are 1-D float32 tensors on the same device; the outputs keep their shapes.
    """
    n, m = maxes.numel(), scalars.numel()
    packed = torch.cat((maxes, sums, counts, scalars))  # (3n + m,)
    every = all_gather_vector(packed, world)  # (world, 3n + m)
    return (
        every[:, :n].amax(dim=0),
        every[:, n : 2 * n].sum(dim=0),
        every[:, 2 * n : 3 * n].sum(dim=0),
        every[:, 3 * n : 3 * n + m].mean(dim=0),
    )
