"""The collector is killed with SIGKILL in the middle of a stream and restarted on the same
database: every point arrives exactly once, and the detector's state carries over, so an
alert that was building up fires at the same step as in an uninterrupted run.

The stream comes from a real training run (tiny preset, library ``train()`` in a subprocess)
whose sink also writes a JSONL copy: stored series are compared with it value by value.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests._collector import Collector, read_all_series, same, wait_until
from trainer_hooks.client import Client, RunInfo, read_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _token(tmp_path) -> str:
    return (tmp_path / "stabmon.db.token").read_text().strip()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _last_step(c: Collector, token: str, run_id: str) -> int:
    try:
        r = httpx.get(f"{c.url}/api/v1/runs/{run_id}", headers=_auth(token), timeout=5)
    except httpx.HTTPError:
        return -1
    return (r.json().get("last_step") or -1) if r.status_code == 200 else -1


def test_sigkill_mid_training_stream_every_point_exactly_once(tmp_path):
    col = Collector(f"sqlite:///{tmp_path / 'stabmon.db'}", workdir=tmp_path).start()
    token = _token(tmp_path)
    run_id = "train-kill-1"
    jsonl = tmp_path / "records.jsonl"
    cmd = [sys.executable, "-m", "tests.faults._train_job", "--url", col.url, "--run-id", run_id]
    cmd += ["--jsonl", str(jsonl), "--spool", str(tmp_path / "spool"), "--steps", "300", "--pause", "0.03"]
    env = {**os.environ, "STABMON_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    job = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _last_step(col, token, run_id) >= 40, timeout=120), "no data arrived"
        col.kill()  # mid-stream: the job keeps training and spooling
        killed_at = len(read_jsonl(jsonl))
        assert wait_until(lambda: len(read_jsonl(jsonl)) >= killed_at + 30, timeout=60)
        col.start()
        out, err = job.communicate(timeout=240)
        assert job.returncode == 0, err[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
        col.stop()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["steps_run"] == 300
    stats = result["stats"]
    assert stats["retries"] >= 1, stats  # the outage was seen by the client
    assert stats["rejected_points"] == 0 and stats["thinned_points"] == 0 and stats["points_lost"] == 0
    assert stats["records_dropped"] == 0 and stats["spooled_points"] == 0

    records = read_jsonl(jsonl)
    assert killed_at < len(records)
    expected: dict[str, dict[int, float]] = {}
    for rec in records:
        for k, v in rec["values"].items():
            expected.setdefault(k, {})[rec["step"]] = v
    col.start()
    try:
        stored = read_all_series(col.url, token, run_id, sorted(expected))
        run = httpx.get(f"{col.url}/api/v1/runs/{run_id}", headers=_auth(token)).json()
    finally:
        col.stop()
    lost = dup = wrong = 0
    for key, want in expected.items():
        ser = stored[key]
        got = dict(zip(ser["step"], ser["last"], strict=True))
        counts = dict(zip(ser["step"], ser["count"], strict=True))
        lost += len(set(want) - set(got))
        dup += sum(1 for s in want if counts.get(s, 1) != 1)
        wrong += sum(1 for s, v in want.items() if s in got and not same(v, float(got[s])))
        assert set(got) <= set(want), key  # nothing stored that the job did not record
    assert (lost, dup, wrong) == (0, 0, 0)
    assert stats["records_written"] == len(records)
    assert run["status"] == "finished"


# -- the detector's state across a crash --------------------------------------------------------
GROWING = "layer.0.fc2.l2_mean"
FLAT = "layer.0.qkv.l2_mean"


def _record(step: int) -> dict:
    # Flat through the detector's 100-step burn-in and its baseline, then 15% growth per step:
    # warning (10x in the window) and critical (100x) fire between steps 125 and 160.
    grow = 1.0 if step < 110 else 1.15 ** (step - 110)
    return {"step": step, "rank": 0, "values": {GROWING: grow, FLAT: 1.0, "loss": 2.0}}


def _client(col: Collector, token: str, run_id: str, tmp_path) -> Client:
    return Client(
        col.url,
        token=token,
        run=RunInfo(name=run_id, id=run_id),
        spool_dir=tmp_path / f"spool-{run_id}",
        max_batch_points=10,
        flush_interval_s=0.05,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
    )


def _alerts(col: Collector, token: str, run_id: str) -> list[tuple]:
    r = httpx.get(f"{col.url}/api/v1/runs/{run_id}/alerts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return sorted((a["rule"], a["severity"], a["status"], a["step"], a["last_step"]) for a in r.json())


@pytest.mark.parametrize("lose_snapshot", [False, True], ids=["saved-state", "rebuilt-from-series"])
def test_alert_building_up_across_a_crash_fires_at_the_reference_step(tmp_path, lose_snapshot):
    db_file = tmp_path / "stabmon.db"
    col = Collector(f"sqlite:///{db_file}", workdir=tmp_path).start()
    token = _token(tmp_path)
    try:
        ref = _client(col, token, "reference", tmp_path)
        for s in range(200):
            ref.write(_record(s))
        assert ref.flush(60)
        ref.close()
        reference = _alerts(col, token, "reference")
        assert {a[0] for a in reference} == {"norm_growth"}, reference
        assert all(120 < a[3] < 170 for a in reference), reference

        c = _client(col, token, "crashed", tmp_path)
        for s in range(120):  # growth has started; no alert yet
            c.write(_record(s))
        assert c.flush(60)
        assert _alerts(col, token, "crashed") == []
        col.kill()
        for s in range(120, 200):
            c.write(_record(s))
        assert wait_until(lambda: c.stats.retries >= 1, timeout=30)
        if lose_snapshot:
            # The saved detector state is gone (or unreadable): the collector must rebuild it
            # by replaying the stored series before it judges the new steps.
            with sqlite3.connect(db_file) as conn:
                crashed = "SELECT id FROM runs WHERE external_id = 'crashed'"
                conn.execute(f"DELETE FROM run_state WHERE run_id IN ({crashed})")
        col.start()
        assert c.flush(60), c.stats
        c.close()
        assert _alerts(col, token, "crashed") == reference
    finally:
        col.stop()


def test_nan_and_inf_survive_a_crash(tmp_path):
    col = Collector(f"sqlite:///{tmp_path / 'stabmon.db'}", workdir=tmp_path).start()
    token = _token(tmp_path)
    try:
        c = _client(col, token, "nonfinite", tmp_path)
        specials = [float("nan"), float("inf"), float("-inf"), 1e308, -1e-308, 5e-324]
        for s in range(60):
            c.write({"step": s, "rank": 0, "values": {"loss": specials[s % len(specials)]}})
            if s == 30:
                assert c.flush(30)
                col.kill()
        col.start()
        assert c.flush(60)
        c.close()
        ser = read_all_series(col.url, token, "nonfinite", ["loss"])["loss"]
        assert ser["step"] == list(range(60)) and set(ser["count"]) == {1}
        for s, v in zip(ser["step"], ser["last"], strict=True):
            want = specials[s % len(specials)]
            have = float(v)
            assert same(want, have) and math.copysign(1, want) == math.copysign(1, have), (s, v)
    finally:
        col.stop()
