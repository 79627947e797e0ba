"""Training throughput while the collector is unreachable: the cost of an outage to the job.

The same training run (library ``train()``, hooks attached, ``--preset`` tiny by default) is
timed with a :class:`NullSink` and with a :class:`Client` whose collector URL answers nothing
(a free local port: connection refused on every attempt), so the client backs off, spools
every batch and, with ``--spool-max-bytes`` small, thins its spool all along. Runs are
interleaved in pairs (the order alternating), so load on the shared machine affects both
sides alike; the figure is the median over pairs of tokens/s (client) / tokens/s (null sink),
training time only. Target: >= 0.98.

Usage: ``python bench/fault_throughput.py [--pairs 8] [--steps 150] [--preset tiny]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from stabmon.net import free_port
from trainer_hooks.client import Client, NullSink, RunInfo
from trainer_hooks.lab.train import TrainConfig, train


def one(mode: str, cfg: TrainConfig, spool_dir: str, spool_max_bytes: int) -> tuple[float, dict]:
    if mode == "null":
        sink = NullSink()
    else:
        sink = Client(
            f"http://127.0.0.1:{free_port()}",
            token="stm_unreachable",
            run=RunInfo(name="outage-bench"),
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            flush_timeout_s=0.2,
            atexit_timeout_s=0.2,
        )
    res = train(cfg, sink=sink)
    extra = {}
    if mode == "client":
        st = sink.stats
        extra = {"spooled_points": st.spooled_points, "thinned": st.thinned_points, "retries": st.retries}
    return res.tokens_per_s, extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--spool-max-bytes", type=int, default=64 * 1024)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(variant="baseline", preset=a.preset, steps=a.steps, eval_every=0, seed=0).resolved()
    ratios, rows = [], []
    with tempfile.TemporaryDirectory() as spool:
        one("null", cfg, spool, a.spool_max_bytes)  # warm-up: imports, allocator, corpus cache
        for i in range(a.pairs):
            order = ("null", "client") if i % 2 == 0 else ("client", "null")
            got = {}
            for mode in order:
                got[mode] = one(mode, cfg, os.path.join(spool, f"{i}"), a.spool_max_bytes)
            ratios.append(got["client"][0] / got["null"][0])
            rows.append({"null_tps": got["null"][0], "client_tps": got["client"][0], **got["client"][1]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = {
        "preset": a.preset,
        "steps": a.steps,
        "pairs": a.pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "null_tps_median": statistics.median(r["null_tps"] for r in rows),
        "client_tps_median": statistics.median(r["client_tps"] for r in rows),
        "thinned_points_total": sum(r["thinned"] for r in rows),
        "loadavg": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
