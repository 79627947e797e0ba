"""`StabmonCallback` under DDP: ``torchrun --nproc_per_node 2`` on CPU (gloo), a tiny GPT-2.

One record per optimizer step, reduced across ranks and written by rank 0 alone, whose loss is
the Trainer's own cross-process mean; an alert that only rank 0 hears stops both ranks at the
same step (the decision is broadcast), after a checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stabmon.net import free_port

pytest.importorskip("accelerate", reason="the Trainer needs accelerate")

from trainer_hooks.client import read_jsonl  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("_ddp_hf_job.py")


@pytest.mark.slow
def test_two_ranks_report_once_per_step_and_stop_together(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("STABMON_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(JOB),
        "--out",
        str(tmp_path),
        "--steps",
        "12",
        "--alert-at",
        "3",
    ]
    # A session of its own, so a timeout ends the ranks too (killing the launcher alone would
    # leave them running).
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("the two ranks did not finish within 180 s:\n" + out[-3000:] + err[-3000:])
    assert proc.returncode == 0, out[-3000:] + err[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Only rank 0 heard the alert; both stopped at the same step, well before max_steps.
    stopped = ranks[0]["global_step"]
    assert ranks[1]["global_step"] == stopped and stopped in (3, 4)
    assert ranks[0]["stopped_at"] == ranks[1]["stopped_at"] == stopped
    assert (tmp_path / "ckpt" / f"checkpoint-{stopped}").is_dir()

    records = read_jsonl(tmp_path / "records0.jsonl")
    assert read_jsonl(tmp_path / "records1.jsonl") == []  # reduced: rank 0 alone writes
    assert [r["step"] for r in records] == list(range(1, stopped + 1))
    assert all(r["rank"] == 0 for r in records)
    logged = {h["step"]: h for h in ranks[0]["log_history"] if "loss" in h}
    for r in records:
        # The Trainer's logged loss is gathered and averaged over both ranks: so is the record's.
        assert r["values"]["loss"] == pytest.approx(logged[r["step"]]["loss"], rel=1e-5)
        assert r["values"]["grad_norm"] == pytest.approx(logged[r["step"]]["grad_norm"], rel=1e-5)
        assert r["values"]["layer.1.attn.logit_max"] > 0
