"""The run's outcome is not lost when the collector is down as the job ends: a real training
process closes its client (status, summary) against a collector that is not running and exits;
the collector comes back and a later client with the same run id replays the spool. The run
then holds every point exactly once, NaN included, and the status and summary the job closed
it with, set after the last point. A second, identical update (a retry whose answer was lost)
changes nothing. Also: a collector that returns while ``close()`` still waits gets the outcome
from the closing process itself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest

from tests._collector import Collector, read_all_series, same
from trainer_hooks.client import Client, RunInfo

pytestmark = pytest.mark.integration

KEYS = ["loss", "layer.0.fc2.l2_mean", "layer.1.attn.logit_max"]
N_STEPS = 120
SUMMARY = {"final_loss": 2.5, "diverged": True, "diverged_at": 97, "alert_policy": {"rollbacks": 0}}


def _value(step: int, i: int) -> float:
    return math.nan if i == 0 and step % 17 == 4 else step + i / 10


JOB = textwrap.dedent(
    """
    import json, math, sys
    from trainer_hooks.client import Client, RunInfo

    url, token, spool, n, summary = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    keys = ["loss", "layer.0.fc2.l2_mean", "layer.1.attn.logit_max"]
    c = Client(url, token=token, run=RunInfo(name="ends-in-outage", id="ends-in-outage"),
               spool_dir=spool, max_batch_points=16, flush_interval_s=0.05, backoff_initial_s=0.05)
    for s in range(n):
        vals = {k: (math.nan if i == 0 and s % 17 == 4 else s + i / 10) for i, k in enumerate(keys)}
        c.write({"step": s, "rank": 0, "values": vals})
    c.close(status="diverged", summary=json.loads(summary), timeout=1.0)
    st = c.stats
    assert st.points_acked == 0 and st.spooled_points == n and st.status_pending, st
    """
)


def _collector(tmp_path) -> tuple[Collector, str]:
    col = Collector(f"sqlite:///{tmp_path / 'stabmon.db'}", workdir=tmp_path).start()
    return col, (tmp_path / "stabmon.db.token").read_text().strip()


def _run(col: Collector, token: str, run_id: str) -> dict:
    r = httpx.get(f"{col.url}/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _assert_every_point_once(col: Collector, token: str, run_id: str) -> None:
    got = read_all_series(col.url, token, run_id, KEYS)
    for i, key in enumerate(KEYS):
        assert got[key]["step"] == list(range(N_STEPS)), key
        assert set(got[key]["count"]) == {1}, key  # each (step, key) stored exactly once
        for step, last in zip(got[key]["step"], got[key]["last"], strict=True):
            assert same(float(last), _value(step, i)), (key, step, last)


def test_status_and_summary_of_a_job_that_ended_during_an_outage_are_replayed(tmp_path):
    col, token = _collector(tmp_path)
    col.stop()  # the job runs and ends while nothing listens
    spool = tmp_path / "spool"
    job = subprocess.run(
        [sys.executable, "-c", JOB, col.url, token, str(spool), str(N_STEPS), json.dumps(SUMMARY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "and the run's status update" in job.stderr  # close() said what it left behind
    col.start()
    try:
        run_info = RunInfo(name="replayer", id="ends-in-outage")
        replay = Client(col.url, token=token, run=run_info, spool_dir=spool)
        assert replay.flush(60), replay.stats
        replay.close(status=None)  # adds nothing: the outcome is the first job's
        assert replay.stats.points_acked == N_STEPS and not replay.stats.status_pending
        assert not replay.spool_path.exists()
        run = _run(col, token, "ends-in-outage")
        assert run["status"] == "diverged" and run["summary"] == SUMMARY
        assert run["last_step"] == N_STEPS - 1
        _assert_every_point_once(col, token, "ends-in-outage")

        # The same update again, as a retry whose first answer was lost would send it.
        h = {"Authorization": f"Bearer {token}"}
        again = httpx.patch(
            f"{col.url}/api/v1/runs/ends-in-outage",
            json={"status": "diverged", "summary": SUMMARY},
            headers=h,
            timeout=30,
        )
        assert again.status_code == 200, again.text
        after = _run(col, token, "ends-in-outage")
        ignore = ("updated_at",)
        assert {k: v for k, v in after.items() if k not in ignore} == {
            k: v for k, v in run.items() if k not in ignore
        }
    finally:
        col.stop()


def test_a_collector_back_while_close_waits_gets_the_outcome_from_the_job_itself(tmp_path):
    col, token = _collector(tmp_path)
    col.stop()
    c = Client(
        col.url,
        token=token,
        run=RunInfo(name="late-collector", id="late-collector"),
        spool_dir=tmp_path / "spool",
        max_batch_points=16,
        flush_interval_s=0.05,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )
    for s in range(N_STEPS):
        c.write({"step": s, "rank": 0, "values": {k: _value(s, i) for i, k in enumerate(KEYS)}})
    outcome = {"status": "finished", "summary": SUMMARY, "timeout": 120}
    closing = threading.Thread(target=c.close, kwargs=outcome)
    closing.start()
    try:
        col.start()
        closing.join(150)
        assert not closing.is_alive()
        assert c.stats.points_acked == N_STEPS and not c.stats.status_pending, c.stats
        run = _run(col, token, "late-collector")
        assert run["status"] == "finished" and run["summary"] == SUMMARY
        _assert_every_point_once(col, token, "late-collector")
    finally:
        col.stop()
