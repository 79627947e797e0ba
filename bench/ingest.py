"""Collector benchmark: sustained ingest throughput and series-query latency, on SQLite and
PostgreSQL, client and server on this machine over loopback.

Ingest: a real ``stabmon serve`` process (uvicorn, default detector on) receives realistic
batches -- 12 layers x 10 series per step = 120 values/step, 100 steps per request (12,000
values) -- from several concurrent clients (threads with pre-encoded bodies, so the figure is
the collector's, not the client's JSON encoder). Throughput = values acknowledged with 2xx per
second of wall time.

Series: a run of 20,000 steps x 120 series (2.4 M values, written through the store's batch
primitive) is queried with ``max_points=1000`` for 1 key and for 10 keys; p50/p95 over repeats.

Each ingest row is measured ``--rounds`` times (fresh runs each round) and reported as best and
median, with the 1-minute load average around each round: on a shared machine one figure alone
says as much about the neighbours as about the collector.

Results are printed and written to the "Ingest" section of docs/benchmarks.md.
Usage: ``python bench/ingest.py [--backends sqlite,postgres] [--seconds 20] [--clients 3] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from stabmon.net import free_port
from stabmon_cli.collector_process import Collector, start_collector

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
PG_SERVER = os.environ.get("STABMON_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
PG_DB = "stabmon_test"
SITES_STATS = [(s, t) for s in ("qkv", "proj", "fc1", "fc2") for t in ("l2_mean", "l2_max")] + [
    ("attn", "logit_max"),
    ("attn", "entropy_mean"),
]
LAYERS = 12
KEYS = [f"layer.{i}.{s}.{t}" for i in range(LAYERS) for s, t in SITES_STATS]  # 120 keys
STEPS_PER_BATCH = 100


def step_values(rng: random.Random, step: int) -> dict[str, float]:
    v = {k: 1.0 + 0.1 * rng.random() for k in KEYS}
    v["layer.0.attn.logit_max"] = 5.0 + rng.random()
    return v


def cpu_seconds(pids: list[int], names: tuple[str, ...] = ()) -> float:
    """User + system CPU seconds used so far by ``pids``, their children and every process whose
    command name is in ``names`` (the PostgreSQL server's backends), from /proc; 0 where /proc is
    unavailable."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, ..., utime (11), stime (12)
        if int(entry.name) in pids or int(fields[1]) in pids or comm in names:  # workers: children
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Backend:
    name: str
    url: str
    cleanup: object


def make_backend(name: str, tmp: Path) -> Backend:
    if name == "sqlite":
        return Backend(name, f"sqlite:///{tmp / 'bench.db'}", lambda: None)
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{PG_SERVER}/{PG_DB}")
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()

    return Backend(name, f"{PG_SERVER}/{PG_DB}?options=-csearch_path%3D{schema}", drop)


def start_server(url: str, port: int, workers: int, token: str, log_dir: Path) -> Collector:
    return start_collector(
        url,
        port=port,
        timeout=120,
        token=token,
        workdir=ROOT,
        log_dir=log_dir,
        log_level="warning",
        args=("--workers", str(workers)),
        env={"STABMON_MIGRATE_ON_START": "1"},
    )


DETECTOR_OFF = {
    "detector": {
        r: {"enabled": False}
        for r in ("non_finite", "loss_spike", "grad_spike", "norm_growth", "logit_max", "entropy_collapse")
    }
}


def encode_batches(n: int) -> list[bytes]:
    """``n`` consecutive request bodies, encoded before the clock starts."""
    rng = random.Random(0)
    out = []
    for b in range(n):
        steps = range(b * STEPS_PER_BATCH, (b + 1) * STEPS_PER_BATCH)
        pts = [{"step": s, "values": step_values(rng, s)} for s in steps]
        out.append(json.dumps({"batch_id": f"b{b}", "points": pts}).encode())
    return out


def bench_ingest(
    base: str,
    token: str,
    seconds: float,
    clients: int,
    detector: bool,
    bodies: list[bytes],
    tag: str = "",
    cpu: tuple[list[int], tuple[str, ...]] = ([], ()),
) -> dict:
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    acked = [0] * clients
    batches = [0] * clients
    errors: list[str] = []
    config = {"variant": "baseline", **({} if detector else DETECTOR_OFF)}
    tag = ("on" if detector else "off") + tag
    with httpx.Client(base_url=base, timeout=60) as c:
        for i in range(clients):
            run = {"id": f"ingest{i}{tag}", "name": "bench", "config": config}
            c.post("/api/v1/runs", json=run, headers=h).raise_for_status()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        run_id = f"ingest{i}{tag}"
        with httpx.Client(base_url=base, timeout=120) as c:
            for body in bodies:
                if time.monotonic() >= stop:
                    return
                r = c.post(f"/api/v1/runs/{run_id}/points", content=body, headers=h)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    return
                acked[i] += r.json()["accepted"]
                batches[i] += 1

    t0 = time.monotonic()
    cpu0 = cpu_seconds(*cpu)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    cpu_s = cpu_seconds(*cpu) - cpu0
    if errors:
        raise RuntimeError(f"ingest errors: {errors[:3]}")
    return {
        "points": sum(acked),
        "batches": sum(batches),
        "wall_s": wall,
        "points_per_s": sum(acked) / wall,
        "batch_ms": 1000 * wall * clients / max(1, sum(batches)),
        "server_cpu_s": cpu_s,
        "points_per_cpu_s": sum(acked) / cpu_s if cpu_s > 0 else 0.0,
    }


def load_query_run(url: str, project_id: int, run_id: str, steps: int) -> float:
    """Write ``steps`` x 120 values through the store's batch primitive (no HTTP, no detector)."""
    from monitor.store import Store
    from stabmon.wire import Point, RunCreate

    store = Store(url)
    store.create_run(project_id, RunCreate(id=run_id, name=run_id))
    rng = random.Random(1)
    t0 = time.monotonic()
    for b in range(0, steps, STEPS_PER_BATCH):
        pts = [Point(step=s, values=step_values(rng, s)) for s in range(b, b + STEPS_PER_BATCH)]
        store.write_points(project_id, run_id, f"q{b}", pts)
    store.dispose()
    return time.monotonic() - t0


def bench_series(base: str, token: str, run_id: str, repeats: int) -> dict:
    h = {"Authorization": f"Bearer {token}"}
    out = {}
    with httpx.Client(base_url=base, timeout=60) as c:
        for label, keys in (("1 key", KEYS[:1]), ("10 keys", KEYS[:10])):
            q = f"/api/v1/runs/{run_id}/series?keys={','.join(keys)}&max_points=1000"
            c.get(q, headers=h).raise_for_status()  # warm caches
            lat = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = c.get(q, headers=h)
                lat.append(1000 * (time.perf_counter() - t0))
                r.raise_for_status()
            assert 0 < len(r.json()["series"][keys[0]]["step"]) <= 1000
            lat.sort()
            out[label] = {"p50_ms": statistics.median(lat), "p95_ms": lat[int(0.95 * (len(lat) - 1))]}
    return out


def run_backend(name: str, args: argparse.Namespace, bodies: list[bytes]) -> dict:
    from monitor.store import Store, migrate

    with tempfile.TemporaryDirectory() as tmp:
        be = make_backend(name, Path(tmp))
        try:
            migrate.upgrade(be.url)
            store = Store(be.url)
            token, _ = store.create_token("bench")
            project_id = store.resolve_token(token).id
            store.dispose()
            port = free_port()
            server = start_server(be.url, port, args.workers, token, Path(tmp))
            base = f"http://127.0.0.1:{port}"
            try:
                load0 = os.getloadavg()[0]
                ingest: dict[str, list[dict]] = {"detector on": [], "detector off": []}
                # The collector's CPU (and, on PostgreSQL, the database server's): values per CPU
                # second is what the collector sustains per core, whatever the neighbours take.
                cpu = ([server.process.pid], ("postgres",) if name == "postgres" else ())
                for rnd in range(args.rounds):
                    for mode in ingest:
                        before = os.getloadavg()[0]
                        r = bench_ingest(
                            base,
                            token,
                            args.seconds,
                            args.clients,
                            mode == "detector on",
                            bodies,
                            f"r{rnd}",
                            cpu,
                        )
                        r["loadavg"] = (before, os.getloadavg()[0])
                        ingest[mode].append(r)
                load_s = load_query_run(be.url, project_id, "query", args.query_steps)
                series = bench_series(base, token, "query", args.repeats)
                load1 = os.getloadavg()[0]
            finally:
                server.stop(30)
        finally:
            be.cleanup()
    return {"ingest": ingest, "load_s": load_s, "series": series, "loadavg": (load0, load1)}


def render(results: dict, args: argparse.Namespace) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = ", ".join(f"{n} {r['loadavg'][0]:.1f}-{r['loadavg'][1]:.1f}" for n, r in results.items())
    lines = [
        "## Ingest",
        "",
        f"Measured by `python bench/ingest.py` on {when}: {platform.machine()}, {os.cpu_count()} CPU cores "
        f"shared with other jobs (1-minute load average during the runs: {loads}), Python "
        f"{platform.python_version()}. One `stabmon serve --workers {args.workers}`, client and server on "
        f"the same machine over loopback; {args.clients} concurrent clients for {args.seconds:.0f} s "
        "per row, "
        f"each request 12 layers x 10 series x {STEPS_PER_BATCH} steps = 12,000 values (bodies encoded "
        "before the clock starts). *detector on* is the default: every batch also runs the divergence "
        "detector over its 100 steps in the same transaction; *detector off* disables every rule in the "
        "run's config (storage path only). Targets: >= 100,000 values/s on SQLite, >= 200,000 on "
        f"PostgreSQL; series queries < 300 ms. Each row was measured {args.rounds} times (a fresh run "
        "each time, rounds interleaved with the other mode); best and median of the rounds, with the "
        "1-minute load average at the start of each round. *values per CPU-second* divides the values "
        "acknowledged by the CPU time the collector process used (on PostgreSQL plus every `postgres` "
        "server process, other sessions' included, so it is a lower bound): the rate one core sustains "
        "whatever else the machine runs.",
        "",
        "| backend | detector | values/s, best | values/s, median | ms per request, median "
        "| values per CPU-second, median | load average per round |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        for mode, rounds in r["ingest"].items():
            rates = sorted(i["points_per_s"] for i in rounds)
            ms = statistics.median(i["batch_ms"] for i in rounds)
            loads = ", ".join(f"{i['loadavg'][0]:.1f}" for i in rounds)
            per_cpu = statistics.median(i["points_per_cpu_s"] for i in rounds)
            lines.append(
                f"| {name} | {mode.split()[1]} | {rates[-1]:,.0f} | {statistics.median(rates):,.0f} "
                f"| {ms:.0f} | {per_cpu:,.0f} | {loads} |"
            )
    lines += [
        "",
        f"Series queries, `max_points=1000`, on a run of {args.query_steps:,} steps x {len(KEYS)} series "
        f"({args.query_steps * len(KEYS):,} values), {args.repeats} repeats after one warm-up:",
        "",
        "| backend | 1 key p50 / p95 | 10 keys p50 / p95 | loading the run via `Store.write_points` |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        s1, s10 = r["series"]["1 key"], r["series"]["10 keys"]
        rate = args.query_steps * len(KEYS) / r["load_s"]
        lines.append(
            f"| {name} | {s1['p50_ms']:.0f} / {s1['p95_ms']:.0f} ms "
            f"| {s10['p50_ms']:.0f} / {s10['p95_ms']:.0f} ms "
            f"| {r['load_s']:.1f} s ({rate:,.0f} values/s) |"
        )
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## Ingest\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--query-steps", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="measurements per ingest row (best and median)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    # Enough bodies for the fastest plausible client; a client stops at the time limit.
    bodies = encode_batches(int(args.seconds * 40) + 10)
    results = {}
    for name in args.backends.split(","):
        print(f"[{name}] running ...", flush=True)
        results[name] = run_backend(name, args, bodies)
        print(json.dumps(results[name], indent=1), flush=True)
    section = render(results, args)
    print(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
