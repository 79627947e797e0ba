"""`stabmon sweep`: the grid runs, writes its tables/series/plots, resumes, and stops early on the
in-process detector's critical finding. Tiny preset, a handful of steps."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from trainer_hooks.client import read_jsonl
from trainer_hooks.lab.sweep import RESULT_COLUMNS, Cell, SweepConfig, config_dict, load_detail, run_sweep
from trainer_hooks.lab.sweep_results import max_stable_lr

STEPS = 6
# Attention-logit bounds no real run stays under: the detector goes critical on the first step.
ALWAYS_CRITICAL = {"logit_max.warning": 1e-7, "logit_max.critical": 1e-6}


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cfg(out, **kw) -> SweepConfig:
    base = dict(
        variants=("baseline", "qk_norm"),
        lrs=(1e-2, 1.0),
        seeds=(0,),
        steps=STEPS,
        preset="tiny",
        out=str(out),
    )
    base.update(kw)
    base.setdefault("jobs", 1)
    return SweepConfig(**base)


def test_grid_tables_series_plots_and_resume(tmp_path):
    cfg = _cfg(tmp_path, warmups=(2,))
    seen = []
    rows = run_sweep(cfg, on_done=lambda row, i, n: seen.append((row["name"], i, n)))
    names = [c.name for c in cfg.cells()]
    assert names == [
        "baseline-lr0.01-w2-s0",
        "baseline-lr1-w2-s0",
        "qk_norm-lr0.01-w2-s0",
        "qk_norm-lr1-w2-s0",
    ]
    assert [r["name"] for r in rows] == names
    assert [s[0] for s in seen] == names and seen[-1][1:] == (4, 4)
    for r in rows:
        assert r["steps_run"] == STEPS and r["warmup"] == 2 and r["stopped_early"] is False
        assert r["val_loss"] is not None and r["wall_s"] > 0
        records = read_jsonl(tmp_path / "runs" / f"{r['name']}.jsonl")
        assert [rec["step"] for rec in records] == list(range(STEPS))
        assert "layer.0.qkv.l2_mean" in records[0]["values"] and "loss" in records[0]["values"]
        detail = load_detail(tmp_path, r["name"])
        assert len(detail["losses"]) == STEPS
        # the stored loss series is the trainer's own history
        assert [rec["values"]["loss"] for rec in records] == pytest.approx(detail["losses"])
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == RESULT_COLUMNS and len(table) == 4
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert (tmp_path / "loss_vs_lr.png").stat().st_size > 1000
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000

    # Second invocation: everything is finished, nothing runs, same table.
    again = []
    assert run_sweep(cfg, on_done=lambda *a: again.append(a)) == rows
    assert again == []


def test_interrupted_cell_is_redone_from_scratch(tmp_path):
    cfg = _cfg(tmp_path, variants=("baseline",), lrs=(1e-2,))
    (row,) = run_sweep(cfg)
    runs = tmp_path / "runs"
    (runs / f"{row['name']}.json").unlink()  # as if killed before the result was written
    with open(runs / f"{row['name']}.jsonl", "a") as f:
        f.write('{"step": 99, "values": {"loss"')  # and a torn line at the end
    seen = []
    (redo,) = run_sweep(cfg, on_done=lambda r, i, n: seen.append(r["name"]))
    assert seen == [row["name"]]
    assert [rec["step"] for rec in read_jsonl(runs / f"{row['name']}.jsonl")] == list(range(STEPS))
    # CPU runs are deterministic: the redo reproduces the first attempt
    assert redo["final_loss"] == row["final_loss"]


def test_early_stop_ends_the_run_at_the_first_critical_finding(tmp_path):
    watched = run_sweep(
        _cfg(tmp_path / "watch", variants=("baseline",), lrs=(1e-2,), detector=ALWAYS_CRITICAL)
    )
    stopped = run_sweep(
        _cfg(
            tmp_path / "stop", variants=("baseline",), lrs=(1e-2,), detector=ALWAYS_CRITICAL, early_stop=True
        )
    )
    (w,), (s,) = watched, stopped
    # Without --early-stop the detector only annotates the row.
    assert (
        w["steps_run"] == STEPS and w["first_critical_step"] == 0 and w["first_critical_rule"] == "logit_max"
    )
    assert w["stopped_early"] is False
    assert s["stopped_early"] is True and s["first_critical_step"] == 0 and s["steps_run"] == 1
    assert len(read_jsonl(tmp_path / "stop" / "runs" / f"{s['name']}.jsonl")) == 1


def test_default_detector_stays_quiet_on_a_short_healthy_run(tmp_path):
    (row,) = run_sweep(_cfg(tmp_path, variants=("qk_norm",), lrs=(3e-3,), early_stop=True))
    assert row["first_critical_step"] is None and row["steps_run"] == STEPS


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"variants": ("nope",)}, "unknown variants"),
        ({"lrs": (0.0,)}, "finite and > 0"),
        ({"lrs": ()}, "at least one"),
        ({"warmups": (-1,)}, "warmups"),
        ({"jobs": 0}, "jobs"),
        ({"preset": "huge"}, "unknown preset"),
        ({"detector": {"logit_max.critcal": 1}}, "critcal"),
        ({"collector": "http://127.0.0.1:1"}, "token"),
    ],
)
def test_bad_config_is_refused_before_any_run(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **kw)
    assert not (tmp_path / "runs").exists()


def test_cell_names_and_max_stable_lr():
    assert Cell("qkv_norm", 0.3, 1, None).name == "qkv_norm-lr0.3-wd-s1"
    rows = [
        {"variant": "a", "lr": 0.01, "diverged": False},
        {"variant": "a", "lr": 0.1, "diverged": False},
        {"variant": "a", "lr": 0.1, "diverged": True},  # one seed diverged: not stable
        {"variant": "a", "lr": 1.0, "diverged": False},  # stable again above: not in the range
        {"variant": "b", "lr": 0.01, "diverged": True},
        {"variant": "c", "lr": 0.3, "diverged": False},
        {"variant": "c", "lr": 0.03, "diverged": False},
        {"variant": "d", "lr": 0.03, "diverged": False},
        {"variant": "d", "lr": 0.3, "diverged": False, "stopped_early": True},  # stopped: not stable
    ]
    assert max_stable_lr(rows) == {"a": 0.01, "b": None, "c": 0.3, "d": 0.03}


@pytest.mark.integration
@pytest.mark.slow  # two spawned worker processes, each importing torch
def test_cli_runs_two_cells_in_two_processes_and_resumes(tmp_path):
    cmd = [
        sys.executable, "-m", "stabmon_cli", "sweep", "--preset", "tiny", "--variants", "baseline,qkv_norm",
        "--lrs", "1e-2", "--seeds", "0", "--steps", "3", "--jobs", "2", "--out", str(tmp_path), "--no-plots",
        "--json",
    ]  # fmt: skip
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)
    assert sorted(r["name"] for r in rows) == ["baseline-lr0.01-wd-s0", "qkv_norm-lr0.01-wd-s0"]
    assert "maximum stable LR" in first.stderr
    assert json.loads((tmp_path / "sweep.json").read_text())["jobs"] == 2
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0 and json.loads(second.stdout) == rows
    assert "[1/" not in second.stderr  # nothing ran


@pytest.mark.integration
def test_cli_rejects_bad_grid(tmp_path):
    cmd = [sys.executable, "-m", "stabmon_cli", "sweep", "--lrs", "1e-2,abc", "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "--lrs" in res.stderr


def test_collector_receives_every_run_alongside_the_series_files(tmp_path, monkeypatch):
    from tests.trainer_hooks._collector_fake import TOKEN, FakeCollector

    monkeypatch.setenv("STABMON_SPOOL_DIR", str(tmp_path / "spool"))
    fc = FakeCollector()
    try:
        cfg = _cfg(tmp_path / "out", variants=("baseline",), lrs=(1e-2,), collector=fc.url, token=TOKEN)
        (row,) = run_sweep(cfg)
    finally:
        fc.stop()
    (run,) = fc.runs.values()
    assert run["name"] == row["name"] and run["config"]["lr"] == 1e-2
    records = read_jsonl(tmp_path / "out" / "runs" / f"{row['name']}.jsonl")
    stored = fc.series()
    assert [stored[("loss", s, 0)] for s in range(STEPS)] == [r["values"]["loss"] for r in records]
    assert TOKEN not in json.dumps(config_dict(cfg))  # sweep.json never holds the secret
