"""Where an ingest batch's time goes, in-process (no HTTP): parsing, the store's write, the
detector, and how much of the write is the database rather than Python.

A fresh run on a fresh database (SQLite file or PostgreSQL schema) receives ``--batches``
consecutive batches of ``--steps`` steps x ``--keys`` series (default: the soak's shape, 24
layers x 10 per-layer series + loss/lr/grad_norm = 243 keys, 10 steps per batch as a client
flushing once a second at 10 steps/s sends them) through :class:`monitor.ingest.IngestService`,
after ``--warmup`` batches. Per batch: wall and CPU time of parsing the raw body and of the whole
ingest; the wall time not spent on this process's CPU is time waiting for the database (its
server work and the round trips). With ``--profile``, a cProfile pass over the same batches
splits the ingest into its functions (cumulative seconds per batch), including the time spent
inside the database driver's calls.

Usage: ``python bench/ingest_profile.py [--backend postgres|sqlite] [--steps 10] [--keys 243]
[--batches 60] [--detector on|off] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's collector, not another installed copy

SITE_STATS = [(s, t) for s in ("qkv", "proj", "fc1", "fc2") for t in ("l2_mean", "l2_max")] + [
    ("attn", "logit_max"),
    ("attn", "entropy_mean"),
]
DETECTOR_OFF = {
    r: {"enabled": False}
    for r in ("non_finite", "loss_spike", "grad_spike", "norm_growth", "logit_max", "entropy_collapse")
}


def keys_for(n: int) -> list[str]:
    """``n`` keys shaped like a GPT's: per-layer keys first, then loss, lr and grad_norm."""
    run = ["loss", "lr", "grad_norm"]
    per_layer = []
    i = 0
    while len(per_layer) < max(0, n - len(run)):
        per_layer += [f"layer.{i}.{s}.{t}" for s, t in SITE_STATS]
        i += 1
    return per_layer[: max(0, n - len(run))] + run[: min(n, len(run))]


def bodies(n: int, steps: int, keys: list[str]) -> list[bytes]:
    rng = random.Random(0)
    out = []
    for b in range(n):
        pts = []
        for s in range(b * steps, (b + 1) * steps):
            v = {k: 1.0 + 0.05 * rng.random() for k in keys}
            pts.append({"step": s, "rank": 0, "values": v})
        out.append(json.dumps({"batch_id": f"b{b}", "points": pts}, separators=(",", ":")).encode())
    return out


def open_backend(name: str, tmp: Path):  # noqa: ANN201
    """(url, cleanup) of a fresh, migrated database: the ingest benchmark's backends."""
    from bench.ingest import make_backend
    from monitor.store import migrate

    backend = make_backend(name, tmp)
    migrate.upgrade(backend.url)
    return backend.url, backend.cleanup


def measure(args: argparse.Namespace) -> dict:
    from monitor.api.routes.points import parse_points
    from monitor.ingest import IngestService
    from monitor.store import Store
    from stabmon.wire import RunCreate

    keys = keys_for(args.keys)
    n = args.warmup + args.batches
    raw = bodies(2 * n, args.steps, keys)
    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = open_backend(args.backend, Path(tmp))
        try:
            store = Store(url)
            token, _ = store.create_token("profile")
            project = store.resolve_token(token).id
            svc = IngestService(store)
            config = {"variant": "baseline"} if args.detector == "on" else {"detector": DETECTOR_OFF}
            rows: dict[str, list[float]] = {"parse_ms": [], "ingest_wall_ms": [], "ingest_cpu_ms": []}
            store.create_run(project, RunCreate(id="timed", name="timed", config=config))
            for i, body in enumerate(raw[:n]):
                t0 = time.perf_counter()
                pts = parse_points(body, "application/json")
                t1, c1 = time.perf_counter(), time.thread_time()
                svc.ingest(project, "timed", pts)
                t2, c2 = time.perf_counter(), time.thread_time()
                if i >= args.warmup:
                    rows["parse_ms"].append(1000 * (t1 - t0))
                    rows["ingest_wall_ms"].append(1000 * (t2 - t1))
                    rows["ingest_cpu_ms"].append(1000 * (c2 - c1))
            out = {k: statistics.median(v) for k, v in rows.items()}
            out["db_wait_ms"] = statistics.median(
                w - c for w, c in zip(rows["ingest_wall_ms"], rows["ingest_cpu_ms"], strict=True)
            )
            out["values_per_batch"] = args.steps * len(keys)
            if args.profile:
                store.create_run(project, RunCreate(id="profiled", name="profiled", config=config))
                parsed = [parse_points(b, "application/json") for b in raw[n:]]
                for p in parsed[: args.warmup]:
                    svc.ingest(project, "profiled", p)
                prof = cProfile.Profile()
                prof.enable()
                for p in parsed[args.warmup :]:
                    svc.ingest(project, "profiled", p)
                prof.disable()
                out["profile"] = prof
            store.dispose()
        finally:
            cleanup()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    p.add_argument("--steps", type=int, default=10, help="steps per batch")
    p.add_argument("--keys", type=int, default=243, help="series per step")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--detector", choices=("on", "off"), default="on")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of the ingest")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args()
    res = measure(args)
    prof = res.pop("profile", None)
    print(
        f"{args.backend}, {args.steps} steps x {len(keys_for(args.keys))} keys = "
        f"{res['values_per_batch']:,} values per batch, detector {args.detector}, "
        f"median of {args.batches} batches, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  parse {res['parse_ms']:.2f} ms | ingest {res['ingest_wall_ms']:.2f} ms wall, "
        f"{res['ingest_cpu_ms']:.2f} ms CPU, {res['db_wait_ms']:.2f} ms waiting for the database | "
        f"{res['values_per_batch'] / (res['parse_ms'] + res['ingest_wall_ms']) * 1000:,.0f} values/s"
    )
    if prof is not None:
        st = pstats.Stats(prof)
        st.sort_stats("cumulative").print_stats(args.top)
        st.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
