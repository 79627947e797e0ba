"""The soak benchmark in short (``bench/soak.py``, 30 s, 20 concurrent runs, PostgreSQL): every
point acknowledged is stored, none is lost, no request is answered 5xx, readers polling the
API meanwhile are served, and the collector's CPU/RSS samples come back. Correctness only:
the figures of the full soak are in docs/benchmarks.md ("Soak")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests._services import require_service

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


def _pg_up() -> bool:
    try:
        eng = create_engine(
            "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", connect_args={"connect_timeout": 3}
        )
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


def test_short_soak_loses_nothing_and_never_5xx(tmp_path):
    if not _pg_up():
        require_service("PostgreSQL", "not reachable at 127.0.0.1:5432 (scripts/services.sh starts it)")
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--runs", "20", "--duration", "30"]
    cmd += ["--layers", "4", "--step-interval", "0.25", "--readers", "2", "--drain-timeout", "90"]
    cmd += ["--sample-interval", "1", "--json", str(out), "--log-dir", str(tmp_path / "logs")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert out.exists(), p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not res["generator_errors"], res["generator_errors"]
    assert res["runs_mismatched"] == {}
    assert res["status_5xx"] == 0, (res["ingest_statuses"], res["reader_statuses"])
    # The backlog drained: everything offered was acknowledged, and stored exactly once.
    assert res["acked_values"] == res["offered_values"] == res["stored_values"] > 0
    assert res["offered_values"] >= 20 * 43 * 100  # 20 runs x 43 series x >= 100 steps
    assert sum(v["n"] for v in res["reader_latency_ms"].values()) > 0
    assert set(res["reader_statuses"]) == {"200"}, res["reader_statuses"]
    assert len(res["samples"]) >= 10 and res["collector_rss_mb"]["max"] > 0
    assert p.returncode == 0, p.stdout[-2000:]
