"""Integration: the client against the real collector (``stabmon serve`` on SQLite in a
subprocess), killed hard mid-stream and restarted on the same port and database. Every
point must be stored exactly once, NaN/inf included, and the run closed as finished.
The training side never imports the collector: it is reached over HTTP only."""

import importlib.util
import math

import httpx
import pytest

from tests._collector import Collector
from tests.trainer_hooks._collector_fake import wait_until
from trainer_hooks.client import Client, RunInfo

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn", "sqlalchemy"))
        or importlib.util.find_spec("monitor.api") is None,
        reason="the collector (stabmon[server]) is not installed",
    ),
]

KEYS = ("loss", "layer.0.fc2.l2_mean", "layer.1.attn.logit_max")


def _record(step: int) -> dict:
    v = {KEYS[0]: 5.0 / (step + 1), KEYS[1]: 1.0 + step / 10, KEYS[2]: float(step)}
    if step % 17 == 4:
        v[KEYS[0]] = float("nan")
    if step % 23 == 7:
        v[KEYS[2]] = float("inf")
    return {"step": step, "rank": 0, "values": v}


def test_client_survives_a_collector_crash_and_restart_exactly_once(tmp_path):
    col = Collector(tmp_path / "stabmon.db", workdir=tmp_path, log_level="warning").start()
    url = col.url
    try:
        token = col.token
        c = Client(
            url,
            token=token,
            run=RunInfo(name="crash-test", config={"variant": "qk_norm"}),
            spool_dir=tmp_path / "spool",
            max_batch_points=10,
            flush_interval_s=0.05,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
        )
        for s in range(100):
            c.write(_record(s))
        assert wait_until(lambda: c.stats.points_acked >= 30, timeout=30)
        col.kill()  # a hard crash: no graceful shutdown
        for s in range(100, 200):
            c.write(_record(s))
        assert wait_until(lambda: c.stats.retries >= 2, timeout=30)
        col.start()  # the same database and port
        for s in range(200, 300):
            c.write(_record(s))
        assert c.flush(60), c.stats
        c.close()
        assert c.stats.rejected_batches == 0 and c.stats.points_acked >= 300

        h = {"Authorization": f"Bearer {token}"}
        got = httpx.get(
            f"{url}/api/v1/runs/{c.run_id}/series",
            params={"keys": ",".join(KEYS), "max_points": 1000},
            headers=h,
            timeout=30,
        ).json()
        assert got["bucket_width"] == 1
        for key in KEYS:
            ser = got["series"][key]
            assert ser["step"] == list(range(300)), key
            assert set(ser["count"]) == {1}, key  # each (step, key) stored exactly once
            for step, last in zip(ser["step"], ser["last"], strict=True):
                want = _record(step)["values"][key]
                have = float(last)
                assert (math.isnan(want) and math.isnan(have)) or want == pytest.approx(have), (key, step)
        run = httpx.get(f"{url}/api/v1/runs/{c.run_id}", headers=h, timeout=30).json()
        assert run["status"] == "finished" and run["config"] == {"variant": "qk_norm"}
    finally:
        col.kill()
