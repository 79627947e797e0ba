"""Soak test: many concurrent simulated training runs against one collector on PostgreSQL.

A real ``stabmon serve`` process gets its own, freshly created PostgreSQL database. ``--runs``
simulated runs (one thread each) produce one step every ``--step-interval`` seconds with a
realistic series set (``--layers`` x 10 per-layer series: qkv/proj/fc1/fc2 ``l2_mean`` and
``l2_max``, attention ``logit_max`` and ``entropy_mean``, plus loss, lr and grad_norm) and post
them the way :class:`trainer_hooks.client.Client` does: one batch per ``--flush-interval``
holding every step produced since the previous answer (capped by points and body size, the
rest carried to the next batch), retried with the same ``batch_id`` on 5xx/connection errors
(so a retry is stored once) after an exponential backoff, or after the server's ``Retry-After``
when that is longer. This is the client's wire behaviour without its JSON encoder:
the per-step value objects are pre-encoded, so the load generator's CPU goes to HTTP, not to
``json.dumps``, and the figures are the collector's. Reader threads poll what the dashboard
and API users poll: the runs list, a run's latest values and a 3-key series query.

Measured: values offered and acknowledged (2xx) vs values stored (counted in the database,
per run: they must be equal), p50/p99 ingest latency, readers' latency, status counts (5xx
must be zero, apart from load shedding: a 503 with ``Retry-After`` saying the collector is
overloaded, which is the collector protecting its latency, counted apart), and the collector's
CPU and RSS sampled from ``/proc`` over time; memory growth
compares the mean RSS of the first and last quarter of the load phase. After the load phase
the generators drain their backlog for at most ``--drain-timeout`` seconds.

The load (generators, readers, :class:`SoakConfig`) is in ``bench/soak_load.py``; this file starts
the collector, samples it, checks what was stored, and writes the report.

Usage: ``python bench/soak.py [--runs 100] [--duration 600] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from stabmon.net import free_port
from stabmon_cli.collector_process import start_collector

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make `bench.*` importable
    sys.path.insert(0, str(ROOT))
from bench.soak_load import Generator, Reader, SoakConfig, series_keys  # noqa: E402

PG_SERVER = os.environ.get("STABMON_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
TICK = os.sysconf("SC_CLK_TCK")
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


# -- the collector process and its /proc figures -----------------------------------------------
def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn workers), from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _cpu_rss(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds used so far, RSS in MiB) summed over ``pids``."""
    cpu = rss = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE_MB
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float, float]] = []  # (t, cpu %, rss MiB)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        prev_t, prev_cpu = t0, _cpu_rss(_proc_tree(self.pid))[0]
        while not self.stop.wait(self.interval):
            now = time.monotonic()
            cpu, rss = _cpu_rss(_proc_tree(self.pid))
            self.samples.append((now - t0, 100 * (cpu - prev_cpu) / (now - prev_t), rss))
            prev_t, prev_cpu = now, cpu


# -- orchestration -------------------------------------------------------------------------------
def _create_database() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    name = f"stabmon_soak_{uuid.uuid4().hex[:10]}"
    eng = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    eng.dispose()
    return f"{PG_SERVER}/{name}", name


def _drop_database(name: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": name}
        )
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    eng.dispose()


def _stored_per_run(db: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    eng = create_engine(db)
    with eng.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT r.external_id, count(*) FROM points p JOIN series s ON s.id = p.series_id "
                "JOIN runs r ON r.id = s.run_id GROUP BY r.external_id"
            )
        ).all()
    eng.dispose()
    return {r[0]: int(r[1]) for r in rows}


def run_soak(cfg: SoakConfig, log_dir: Path | None = None) -> dict:
    """Run one soak; returns every figure as a JSON-able dict."""
    from monitor.store import Store, migrate

    dedicated = None
    db = cfg.db
    if db is None:
        db, dedicated = _create_database()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="stabmon-soak-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    collector = None
    try:
        migrate.upgrade(db)
        store = Store(db, pool_size=1)
        token, _ = store.create_token("soak", label="bench/soak.py")
        store.dispose()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        collector = start_collector(
            db,
            port=port,
            timeout=120,
            token=token,
            workdir=ROOT,
            log_dir=log_dir,
            log_level="warning",
            args=("--workers", str(cfg.workers)),
        )
        sampler = Sampler(collector.process.pid, cfg.sample_interval_s)
        start = time.monotonic() + 2.0
        clock = {"start": start, "end": start + cfg.duration_s}
        clock["hard_end"] = clock["end"] + cfg.drain_timeout_s
        gens = [Generator(url, token, i, cfg, clock) for i in range(cfg.runs)]
        stop_readers = threading.Event()
        readers = [Reader(url, token, gens, cfg, stop_readers) for _ in range(cfg.readers)]
        sampler.start()
        for g in gens:
            g.start()
        time.sleep(max(0.0, start - time.monotonic()))
        for r in readers:
            r.start()
        time.sleep(max(0.0, clock["end"] - time.monotonic()))
        load_samples = len(sampler.samples)
        stop_readers.set()
        for g in gens:
            g.join(max(1.0, clock["hard_end"] + 130 - time.monotonic()))
        drained_s = time.monotonic() - clock["end"]
        sampler.stop.set()
        for r in readers:
            r.join(130)
        stored = _stored_per_run(db)
    finally:
        if collector is not None:
            collector.stop(30)
        if dedicated is not None:
            _drop_database(dedicated)

    per_step = len(series_keys(cfg.layers))
    lat = [x for g in gens for x in g.stats.latencies_ms]
    reader_lat = {k: [x for r in readers for x in r.latencies_ms[k]] for k in ("runs", "latest", "series")}
    statuses: dict[str, int] = {}
    for g in gens:
        for k, v in g.stats.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    reader_statuses: dict[str, int] = {}
    for r in readers:
        for k, v in r.statuses.items():
            reader_statuses[k] = reader_statuses.get(k, 0) + v
    # Every acknowledged value must be stored; a batch still unanswered when its generator gave
    # up may or may not have been committed, so stored may exceed acknowledged by that much.
    mismatched = {
        g.stats.run_id: (g.stats.acked_values, stored.get(g.stats.run_id, 0), g.stats.unacked_values)
        for g in gens
        if not g.stats.acked_values
        <= stored.get(g.stats.run_id, 0)
        <= g.stats.acked_values + g.stats.unacked_values
    }
    lost = sum(max(0, g.stats.acked_values - stored.get(g.stats.run_id, 0)) for g in gens)
    samples = sampler.samples[:load_samples] or sampler.samples
    q = max(1, len(samples) // 4)
    rss_first = statistics.mean(s[2] for s in samples[:q]) if samples else float("nan")
    rss_last = statistics.mean(s[2] for s in samples[-q:]) if samples else float("nan")
    offered = sum(g.stats.offered_values for g in gens)
    acked = sum(g.stats.acked_values for g in gens)
    return {
        "config": dataclasses.asdict(cfg),
        "series_per_step": per_step,
        "offered_values": offered,
        "offered_values_per_s": offered / cfg.duration_s,
        "acked_values": acked,
        "acked_values_per_s_load_phase": sum(g.stats.acked_in_load_phase for g in gens) / cfg.duration_s,
        "stored_values": sum(stored.values()),
        "lost_values": lost,
        "unacked_in_flight_values": sum(g.stats.unacked_values for g in gens),
        "backlog_values": offered - acked,
        "runs_mismatched": mismatched,
        "generator_errors": {g.stats.run_id: g.error for g in gens if g.error},
        "drain_s": drained_s,
        "ingest_requests": len(lat),
        "ingest_latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat or [0])},
        "ingest_statuses": statuses,
        "retries": sum(g.stats.retries for g in gens),
        "shed_503": sum(g.stats.shed for g in gens),
        "reader_latency_ms": {
            k: {"n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
            for k, v in reader_lat.items()
        },
        "reader_statuses": reader_statuses,
        # Load shedding (503 + Retry-After, "collector overloaded") is the collector working as
        # designed under overload and is reported as shed_503; any other 5xx is a failure.
        "status_5xx": sum(v for k, v in statuses.items() if k.startswith("5"))
        - sum(g.stats.shed for g in gens)
        + sum(v for k, v in reader_statuses.items() if k.startswith("5")),
        "collector_cpu_pct": {
            "mean": statistics.mean(s[1] for s in samples) if samples else float("nan"),
            "max": max((s[1] for s in samples), default=float("nan")),
        },
        "collector_rss_mb": {
            "first_quarter_mean": rss_first,
            "last_quarter_mean": rss_last,
            "max": max((s[2] for s in samples), default=float("nan")),
            "growth_ratio": rss_last / rss_first if samples else float("nan"),
        },
        "samples": [[round(t, 1), round(c, 1), round(r, 1)] for t, c, r in sampler.samples],
        "loadavg": os.getloadavg(),
    }


def render(res: dict, when: str) -> str:
    """The "Soak" section of docs/benchmarks.md from one result."""
    c, r = res["config"], res
    lat, cpu, rss = r["ingest_latency_ms"], r["collector_cpu_pct"], r["collector_rss_mb"]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["ingest_statuses"].items()))
    readers = " ; ".join(
        f"{k} {v['p50']:,.0f} / {v['p99']:,.0f} ms (n={v['n']})" for k, v in r["reader_latency_ms"].items()
    )
    shape = f"{c['runs']} x {r['series_per_step']} x {c['step_interval_s']} s"
    phases = f"{c['duration_s']:.0f} s / {r['drain_s']:.0f} s (limit {c['drain_timeout_s']:.0f} s)"
    acked = f"{r['acked_values']:,} ({r['acked_values_per_s_load_phase']:,.0f}/s in the load phase)"
    missing = f"{r['lost_values']:,} / {len(r['runs_mismatched'])}"
    backlog = f"{r['backlog_values']:,} values (never acknowledged, so not lost: a Client keeps them spooled)"
    rss_s = (
        f"{rss['first_quarter_mean']:,.0f} / {rss['last_quarter_mean']:,.0f} / {rss['max']:,.0f} MiB "
        f"(last/first {rss['growth_ratio']:.2f})"
    )
    rows = [
        ("runs x series per step x step interval", shape),
        ("load phase / drain", phases),
        ("values offered", f"{r['offered_values']:,} ({r['offered_values_per_s']:,.0f}/s)"),
        ("values acknowledged (2xx)", acked),
        ("values stored (counted in the database)", f"{r['stored_values']:,}"),
        ("acknowledged but not stored (lost) / runs mismatched", missing),
        ("stored, answer not received before the end", f"{r['unacked_in_flight_values']:,} values at most"),
        ("backlog left with the generators at the end", backlog),
        ("ingest requests / answers", f"{r['ingest_requests']:,} / {statuses}; retries {r['retries']:,}"),
        ("ingest latency p50 / p99 / max", f"{lat['p50']:,.0f} / {lat['p99']:,.0f} / {lat['max']:,.0f} ms"),
        ("readers (runs list, latest, 3-key series) p50 / p99", readers),
        ("ingest answers shed: 503 + Retry-After, collector overloaded", f"{r.get('shed_503', 0):,}"),
        ("other 5xx answers", f"{r['status_5xx']}"),
        ("collector CPU, all workers: mean / max", f"{cpu['mean']:.0f}% / {cpu['max']:.0f}% of one core"),
        ("collector RSS: first quarter / last quarter / max", rss_s),
    ]
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    return (
        "## Soak\n\n"
        f"Measured by `python bench/soak.py --runs {c['runs']} --duration {c['duration_s']:.0f} "
        f"--workers {c['workers']}` on {when}: one `stabmon serve --workers {c['workers']}` on a fresh "
        "PostgreSQL database, load generators and readers in one process on the same machine "
        f"(2 cores shared with other jobs; 1-minute load average at the end {r['loadavg'][0]:.1f}).\n\n"
        "| measure | value |\n|---|---|\n" + table + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = SoakConfig()
    p.add_argument("--runs", type=int, default=d.runs)
    p.add_argument("--duration", type=float, default=d.duration_s, help="load phase, seconds")
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--step-interval", type=float, default=d.step_interval_s)
    p.add_argument("--flush-interval", type=float, default=d.flush_interval_s)
    p.add_argument("--readers", type=int, default=d.readers)
    p.add_argument("--workers", type=int, default=d.workers, help="collector worker processes")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s)
    p.add_argument("--sample-interval", type=float, default=d.sample_interval_s)
    p.add_argument("--db", default=None, help="PostgreSQL URL (default: a fresh dedicated database)")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--log-dir", type=Path, default=None)
    a = p.parse_args(argv)
    cfg = SoakConfig(
        runs=a.runs,
        duration_s=a.duration,
        layers=a.layers,
        step_interval_s=a.step_interval,
        flush_interval_s=a.flush_interval,
        readers=a.readers,
        workers=a.workers,
        drain_timeout_s=a.drain_timeout,
        sample_interval_s=a.sample_interval,
        db=a.db,
    )
    res = run_soak(cfg, a.log_dir)
    if a.json is not None:
        a.json.write_text(json.dumps(res, indent=1))
    summary = {k: v for k, v in res.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    ok = not res["runs_mismatched"] and res["status_5xx"] == 0 and not res["generator_errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
