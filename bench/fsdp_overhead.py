"""FSDP2 overhead: time per training step of a monitored FSDP2 job against a monitored DDP job.

Two CPU processes (gloo), each with ``--threads`` intra-op threads, train stabmon's GPT with the
``small`` preset's shape on their own random-byte batches (``--batch`` sequences per rank),
AdamW, in four configurations held side by side in each process:

- ``ddp``: ``DistributedDataParallel``; ``ddp+stabmon``: the same with ``attach(...)`` before
  wrapping;
- ``fsdp2``: ``fully_shard`` on every block, then on the model (DTensor parameters, gradients
  and AdamW state); ``fsdp2+stabmon``: the same with ``attach(...)`` after sharding.

Monitored configurations record every statistic (``update_stats=True``, ``attn_rows=16``,
the optimizer given to ``attach``), reduced across ranks (``reduce=True``: one collective per
step) into a ``MemorySink`` on rank 0. The configurations are interleaved round-robin with a
rotating order (both ranks follow the same order); in each round each runs ``--warmup`` +
``--steps`` steps, and its time per step is rank 0's median interval between step ends, in
wall time (the ranks wait for each other in collectives, so wall time is the step time) and in
process CPU time. Each figure is the median over ``--rounds`` rounds.

Prints the table and writes the "FSDP2 overhead" section of docs/benchmarks.md.
Usage: ``python bench/fsdp_overhead.py [--rounds 5] [--steps 15] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(ROOT))
from bench.report import write_section  # noqa: E402

WORLD = 2
CONFIGS = ("ddp", "ddp+stabmon", "fsdp2", "fsdp2+stabmon")


def _build(config: str):
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from trainer_hooks.client import MemorySink
    from trainer_hooks.hooks import attach
    from trainer_hooks.lab.config import preset
    from trainer_hooks.lab.model import GPT

    torch.manual_seed(0)
    model = GPT(preset("small"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    options = {"optimizer": opt, "reduce": True, "update_stats": True, "attn_rows": 16}
    mon = None
    if config.startswith("ddp"):
        if config.endswith("stabmon"):
            mon = attach(model, sink=MemorySink(), **options)
        model = DistributedDataParallel(model)
    else:
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        if config.endswith("stabmon"):
            mon = attach(model, sink=MemorySink(), **options)
    return model, opt, mon


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    from trainer_hooks.lab.config import preset

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        runs = {c: _build(c) for c in CONFIGS}
        T = preset("small").block_size
        g = torch.Generator().manual_seed(rank)
        n = args.warmup + args.steps + 1
        data = torch.randint(0, 256, (n * args.batch, T + 1), generator=g)
        times: dict[str, list[tuple[float, float]]] = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for config in order:
                model, opt, mon = runs[config]
                stamps = []
                for i in range(n):
                    xy = data[i * args.batch : (i + 1) * args.batch]
                    _, loss = model(xy[:, :-1], xy[:, 1:])
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if mon is not None:
                        mon.step(loss=loss)
                    stamps.append((time.process_time(), time.perf_counter()))
                kept = stamps[args.warmup :]
                pairs = list(zip(kept, kept[1:], strict=False))
                times[config].append(
                    (
                        statistics.median(b[0] - a[0] for a, b in pairs),
                        statistics.median(b[1] - a[1] for a, b in pairs),
                    )
                )
        if rank == 0:
            recs = len(runs["fsdp2+stabmon"][2].sink.records)
            Path(out).write_text(json.dumps({"times": times, "records": recs}))
        for _, _, mon in runs.values():
            if mon is not None:
                mon.remove()
    finally:
        dist.destroy_process_group()


def _table(times: dict[str, list[list[float]]], args: argparse.Namespace) -> tuple[str, list[str]]:
    cpu = {c: statistics.median(t[0] for t in times[c]) * 1e3 for c in CONFIGS}
    wall = {c: statistics.median(t[1] for t in times[c]) * 1e3 for c in CONFIGS}

    def ratio(a: str, b: str, i: int) -> tuple[float, float, float]:
        rs = [x[i] / y[i] for x, y in zip(times[a], times[b], strict=True)]
        return statistics.median(rs), min(rs), max(rs)

    lines = [
        "| configuration | ms/step (wall) | ms/step (cpu) |",
        "|---|---:|---:|",
        *(f"| {c} | {wall[c]:.1f} | {cpu[c]:.1f} |" for c in CONFIGS),
        "",
        "| ratio (per round, median and min..max) | wall | cpu |",
        "|---|---:|---:|",
    ]
    summary = []
    for a, b, what in (
        ("fsdp2+stabmon", "ddp+stabmon", "FSDP2 monitored / DDP monitored"),
        ("fsdp2", "ddp", "FSDP2 / DDP, neither monitored"),
        ("ddp+stabmon", "ddp", "stabmon's overhead under DDP"),
        ("fsdp2+stabmon", "fsdp2", "stabmon's overhead under FSDP2"),
    ):
        (mw, lw, hw), (mc, lc, hc) = ratio(a, b, 1), ratio(a, b, 0)
        lines.append(f"| {what} | {mw:.3f} ({lw:.2f}..{hw:.2f}) | {mc:.3f} ({lc:.2f}..{hc:.2f}) |")
        summary.append(f"{what}: {mw:.3f} wall, {mc:.3f} cpu")
    return "\n".join(lines), summary


def main() -> None:
    import torch.multiprocessing as mp

    from stabmon.net import free_port

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="sequences per rank")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_worker, args=(free_port(), args, out), nprocs=WORLD, join=True)
        result = json.loads(Path(out).read_text())
    table, summary = _table(result["times"], args)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (
        "## FSDP2 overhead\n\n"
        f"`python bench/fsdp_overhead.py --rounds {args.rounds} --steps {args.steps} "
        f"--threads {args.threads}` on {platform.machine()} ({os.cpu_count()} cores, load average "
        f"{load} at the end), torch {torch.__version__}, {WORLD} processes (gloo), "
        f"{args.threads} intra-op thread(s) each.\n"
        f"stabmon's GPT with the `small` preset's shape (d=96, 4 layers, 4 heads, T=128), "
        f"{args.batch} sequences per rank, AdamW. Monitored: every statistic (`update_stats=True`, "
        "`attn_rows=16`, the optimizer given to `attach`), `reduce=True`, a `MemorySink` on rank 0. "
        f"Time per step: rank 0's median interval between step ends over {args.steps} steps after "
        f"{args.warmup} warm-up steps; each figure is the median over {args.rounds} rounds, the four "
        "configurations interleaved round-robin with a rotating order. Wall time is the step time "
        "(ranks wait for each other in collectives), but on this shared 2-core machine it mostly "
        "measures the neighbours (see the min..max spreads): read the CPU-time ratios.\n\n"
        f"{table}\n\n"
        "- Under FSDP2 the parameter-side statistics read the local shards (`to_local()`, no "
        "communication) and their sums of squares travel in the step's one reducing collective; "
        "FSDP2's own all-gathers and reduce-scatters are the same with and without stabmon.\n"
        "- The first ratio compares two different parallelisms, each monitored: it mixes "
        "FSDP2's own cost against DDP on CPU (the second ratio) with stabmon's; the last two "
        "isolate stabmon's part under each.\n"
    )
    print(text)
    print(f"records on rank 0 (fsdp2+stabmon): {result['records']}")
    if not args.no_write:
        write_section("FSDP2 overhead", text)
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
