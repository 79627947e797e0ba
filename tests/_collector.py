"""The tests' handle on a real collector process, and small HTTP helpers around it.

Starting ``python -m stabmon_cli serve`` and waiting until it answers is implemented once, in
:mod:`stabmon_cli.collector_process`, which the demo and the benchmarks use too; this module
re-exports it for the tests (fault, security, load, dashboard, integration) and adds what only
tests need: polling, comparing NaN-aware values, reading whole series back.
"""

from __future__ import annotations

import math

import httpx

from stabmon.net import free_port
from stabmon_cli.collector_process import Collector, CollectorStartError, start_collector, wait_until

__all__ = [
    "Collector",
    "CollectorStartError",
    "free_port",
    "read_all_series",
    "same",
    "start_collector",
    "wait_until",
]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def read_all_series(url: str, token: str, run_id: str, keys: list[str]) -> dict[str, dict]:
    """Every stored value of ``keys`` (rank 0), un-downsampled, in chunks of 50 keys."""
    h = {"Authorization": f"Bearer {token}"}
    out: dict[str, dict] = {}
    for i in range(0, len(keys), 50):
        r = httpx.get(
            f"{url}/api/v1/runs/{run_id}/series",
            params={"keys": ",".join(keys[i : i + 50]), "max_points": 10_000},
            headers=h,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["bucket_width"] == 1, body["bucket_width"]
        out.update(body["series"])
    return out
