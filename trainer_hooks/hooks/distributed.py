"""Rank discovery and the cross-rank reduction of one step's statistics.

With ``torch.distributed`` initialised every record carries the process's rank. With
``attach(..., reduce=True)`` each rank packs its step into one float32 vector
``[maxes | sums | counts | scalars]`` and a single ``all_gather`` exchanges it; every rank then
combines on the device (max of maxima, sum of sums and counts, mean of run-level scalars) and
rank 0 alone emits the record. One collective per emitted step, sized a few KB, with no host
synchronisation; like any collective it must be reached by every rank at the same step, with
the same run-level keywords passed to ``step()``.

Parameters sharded by FSDP2 (``fully_shard``: DTensor parameters, gradients and optimizer state)
give *root* series (:data:`~.accumulate.ROOT`): each rank adds the sums of squares of its local
shards and the sums travel in the ``sums`` block, added over ranks before the square root. With
``reduce=True`` that is the same single collective; with ``reduce=False`` one ``all_reduce`` of
just those sums (:func:`sum_over_ranks`) keeps every rank's own record correct.
"""

from __future__ import annotations

import torch

from .accumulate import to_device


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if not is_distributed():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a DTensor (FSDP2's sharded parameters, gradients and optimizer state)."""
    if not is_distributed():  # a DTensor needs a process group
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without DTensor
        return False
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (no communication); any other tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") and hasattr(t, "placements") else t


def replication(t: torch.Tensor, world: int) -> float:
    """How many ranks hold each element of DTensor ``t``: the world size over the product of its
    mesh's sharded dimensions (1 for FSDP2, the replica count for HSDP)."""
    shards = 1
    for dim, placement in enumerate(t.placements):  # type: ignore[attr-defined]
        if placement.is_shard():
            shards *= t.device_mesh.size(dim)  # type: ignore[attr-defined]
    return max(1.0, world / shards)


def share(t: torch.Tensor, world: int) -> float:
    """The part of ``t``'s squared norm that this rank's copy adds to a sum over ranks: 1 / the
    ranks holding each element (a plain tensor under FSDP2 is replicated on every rank)."""
    return 1.0 / replication(t, world) if is_dtensor(t) else 1.0 / world


def local_grads_sq(params: list[torch.Tensor], world: int) -> torch.Tensor | None:
    """This rank's share of the summed squared norms of ``params``' gradients (0-d), or None."""
    if not params:
        return None
    grads = [local(p.grad) for p in params]  # type: ignore[arg-type]
    device = grads[0].device
    sq = torch.stack([n.to(device, non_blocking=True) for n in torch._foreach_norm(grads)]).float().square_()
    return (sq * to_device(torch.tensor([share(p, world) for p in params]), device)).sum()


def sum_over_ranks(sums: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``sums`` with its entries ``idx`` replaced by their sum over ranks (one ``all_reduce``)."""
    import torch.distributed as dist

    part = sums.index_select(0, idx)
    dist.all_reduce(part, op=dist.ReduceOp.SUM)
    return sums.index_copy(0, idx, part)


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
