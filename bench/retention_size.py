"""Storage per value before and after retention, on SQLite (docs/retention.md).

Writes one finished run of ``--series`` series over ``--steps`` steps (append batches of 100
steps, as a training job sends them) into a fresh SQLite file, then measures the file after a
checkpoint, after ``Store.prune`` (no vacuum: the freed pages stay in the file) and after the
prune's ``VACUUM``. Prints one JSON object.

    python -m bench.retention_size --series 100 --steps 5000
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from datetime import timedelta
from pathlib import Path

from monitor.store import Store, migrate
from monitor.store.codec import utcnow
from stabmon.wire import Point, RunCreate, RunUpdate


def measure(series: int, steps: int, workdir: Path) -> dict:
    url = f"sqlite:///{workdir / 'retention.db'}"
    migrate.upgrade(url)
    store = Store(url, pool_size=1)
    try:
        pid = store.ensure_project("bench")
        store.create_run(pid, RunCreate(id="run", name="run"))
        keys = [f"layers.{i // 4}.attn.s{i % 4}" for i in range(series)]
        for b0 in range(0, steps, 100):
            pts = [
                Point(step=s, values={k: math.sin(s / 50 + j) + s * 1e-4 for j, k in enumerate(keys)})
                for s in range(b0, min(b0 + 100, steps))
            ]
            store.write_points(pid, "run", f"b{b0}", pts)
        store.update_run(pid, "run", RunUpdate(status="finished"))
        later = utcnow() + timedelta(seconds=1)
        before = store.prune(timedelta(0), dry_run=True, now=later).db_bytes_before
        unvacuumed = store.prune(timedelta(0), now=later)
        values = series * steps
        report = store.prune(timedelta(0), vacuum=True, now=later)  # nothing left: just VACUUM
        return {
            "series": series,
            "steps": steps,
            "values": values,
            "points_deleted": unvacuumed.points,
            "batches_deleted": unvacuumed.ingest_batches,
            "bytes_before": before,
            "bytes_after_prune": unvacuumed.db_bytes_after,
            "bytes_after_vacuum": report.db_bytes_after,
            "bytes_per_value_before": round(before / values, 1),
            "bytes_per_value_after": round(report.db_bytes_after / values, 1),
        }
    finally:
        store.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(measure(args.series, args.steps, Path(d)), indent=2))


if __name__ == "__main__":
    main()
