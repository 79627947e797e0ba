"""Micro-benchmark of ``Detector.observe`` throughput: steps per second for one run with a
realistic key set (default 120 keys: 12 layers x qkv/proj/fc1/fc2 l2_mean/l2_max + attention
logit max/entropy, plus loss/grad_norm/lr), in three regimes: a quiet healthy run, a run where
every norm series is firing (the aggregation path sorts and formats), and NaN everywhere.

    .venv/bin/python bench/detector_speed.py [--keys 120] [--steps 5000]

Pure Python, one thread; the collector calls ``observe`` once per step per run on ingest.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

from stabmon.detect import Detector


def make_keys(n_keys: int) -> list[str]:
    keys = ["loss", "grad_norm", "lr"]
    layer = 0
    while len(keys) < n_keys:
        for site in ("qkv", "proj", "fc1", "fc2"):
            keys += [f"layer.{layer}.{site}.l2_mean", f"layer.{layer}.{site}.l2_max"]
        keys += [f"layer.{layer}.attn.logit_max", f"layer.{layer}.attn.entropy_mean"]
        layer += 1
    return keys[:n_keys]


def series(keys: list[str], steps: int, regime: str, seed: int = 0) -> list[tuple[int, dict[str, float]]]:
    rng = random.Random(seed)
    out = []
    for step in range(steps):
        blow = 1.3 ** min(step, 200) if regime == "firing" else 1.0
        values = {}
        for k in keys:
            if regime == "nan":
                values[k] = math.nan
            elif k.endswith("entropy_mean"):
                values[k] = 2.0 * (1 + 0.02 * rng.gauss(0, 1)) / blow
            else:
                values[k] = (3.0 + 0.1 * rng.gauss(0, 1)) * (blow if k.startswith("layer.") else 1.0)
        out.append((step, values))
    return out


def bench(keys: list[str], steps: int, regime: str) -> dict[str, float]:
    points = series(keys, steps, regime)
    det = Detector()
    state = det.new_state()
    n_findings = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for step, values in points:
        n_findings += len(det.observe(state, step, values))
    dt = time.perf_counter() - t0
    # CPU time as well: on a shared machine wall time measures the neighbours too.
    cpu = time.process_time() - c0
    t1 = time.perf_counter()
    snapshot = json.dumps(state.to_dict(), allow_nan=False)
    t_snap = time.perf_counter() - t1
    return {
        "regime": regime,
        "keys": len(keys),
        "steps": steps,
        "steps_per_s": round(steps / dt, 1),
        "steps_per_cpu_s": round(steps / cpu, 1),
        "us_per_step": round(1e6 * dt / steps, 1),
        "us_per_key": round(1e6 * dt / steps / len(keys), 2),
        "findings": n_findings,
        "state_json_bytes": len(snapshot),
        "snapshot_ms": round(1e3 * t_snap, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=120)
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    keys = make_keys(args.keys)
    for regime in ("quiet", "firing", "nan"):
        print(json.dumps(bench(keys, args.steps, regime)))


if __name__ == "__main__":
    main()
