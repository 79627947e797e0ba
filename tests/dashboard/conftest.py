"""Fixtures for the dashboard tests: a real collector (``python -m stabmon_cli serve`` on a free
port, SQLite in a temporary directory, a token made with ``stabmon token create``), runs
ingested through its HTTP API, and a headless Chromium driven by Playwright.

One collector serves the whole session: starting it and ingesting a few hundred steps costs
seconds, and every test reads the same realistic data (a healthy run, a diverging one with
real detector alerts, and a learning-rate sweep over the five norm variants).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.headless import CHROMIUM, CHROMIUM_ARGS
from bench.synthetic_runs import RunShape, batches
from tests._collector import Collector, start_collector
from tests._services import require_service

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
VARIANTS = ("baseline", "qk_norm", "qk_fc_norm", "qkv_norm", "qk_norm_cap")
SWEEP_LRS = (1e-3, 3e-3, 1e-2)


def _cli(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "stabmon_cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"stabmon {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def start_project_collector(tmp: Path, project: str = "stability", db: str | None = None) -> Collector:
    """A collector process on a free port with an SQLite database in ``tmp`` (or ``db``),
    and a fresh token for ``project`` (made with ``stabmon token create``, as a user would)."""
    db = db or f"sqlite:///{tmp / 'stabmon.db'}"
    env = {**os.environ, "STABMON_DB": db, "PYTHONUNBUFFERED": "1"}
    token = _cli("token", "create", "--project", project, "--db", db, env=env).strip().splitlines()[-1]
    return start_collector(db, timeout=60, token=token, workdir=REPO, log_dir=tmp, log_level="warning")


def create_run(client: httpx.Client, name: str, config: dict, run_id: str | None = None) -> str:
    r = client.post(
        "/api/v1/runs", json={"id": run_id or uuid.uuid4().hex[:16], "name": name, "config": config}
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def ingest(
    client: httpx.Client,
    run_id: str,
    shape: RunShape,
    start: int = 0,
    stop: int | None = None,
    size: int = 100,
) -> list[dict]:
    """Send steps [start, stop) of ``shape`` through the API; returns the last response body."""
    body: dict = {}
    for batch in batches(shape, size, start, stop):
        r = client.post(
            f"/api/v1/runs/{run_id}/points",
            json={"batch_id": f"{run_id}-{batch[0]['step']}-{batch[-1]['step']}", "points": batch},
        )
        assert r.status_code == 200, r.text
        body = r.json()
    return body.get("alerts", [])


def finish(client: httpx.Client, run_id: str, status: str, summary: dict) -> None:
    r = client.patch(f"/api/v1/runs/{run_id}", json={"status": status, "summary": summary})
    assert r.status_code == 200, r.text


@dataclass
class Seeded:
    collector: Collector
    healthy: str
    diverging: str
    diverging_shape: RunShape
    sweep: dict[tuple[str, float], str]


def _sweep_outcome(variant: str, lr: float) -> tuple[str, dict]:
    """The paper's picture in miniature: the baseline diverges at the highest LR, QK-norm
    variants keep a low loss there; every variant is best at the middle LR."""
    base = {1e-3: 3.40, 3e-3: 3.25, 1e-2: 3.30}[lr]
    bonus = {"baseline": 0.0, "qk_norm": -0.03, "qk_fc_norm": -0.05, "qkv_norm": -0.04, "qk_norm_cap": -0.06}
    if variant == "baseline" and lr == 1e-2:
        return "diverged", {"final_loss": "nan", "min_loss": 4.1, "diverged": True, "diverged_at": 35}
    loss = base + bonus[variant] + (0.08 if lr == 1e-2 else 0.0)
    return "finished", {
        "final_loss": loss,
        "min_loss": loss - 0.02,
        "val_loss": loss + 0.05,
        "diverged": False,
    }


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("collector")
    c = start_project_collector(tmp)
    try:
        with c.client() as cl:
            # Separate q/k/v projections (Llama-style), so the page shows those heatmaps.
            healthy_shape = RunShape(steps=300, layers=4, seed=1, sites=("q", "k", "v", "proj", "fc1", "fc2"))
            healthy = create_run(
                cl,
                "qk_norm-lr3e-3",
                {"variant": "qk_norm", "lr": 3e-3, "preset": "tiny", "seed": 1},
                "healthy",
            )
            ingest(cl, healthy, healthy_shape)
            finish(cl, healthy, "finished", {"final_loss": 3.31, "min_loss": 3.29, "diverged": False})

            div_shape = RunShape(steps=300, layers=4, diverge_at=250, seed=2)
            diverging = create_run(
                cl,
                "baseline-lr1e-2",
                {"variant": "baseline", "lr": 1e-2, "preset": "tiny", "seed": 2},
                "diverging",
            )
            ingest(cl, diverging, div_shape)
            # Still "running": it keeps its gauges in /metrics; the summary marks the divergence.
            r = cl.patch(f"/api/v1/runs/{diverging}", json={"summary": {"diverged_at": 250}})
            assert r.status_code == 200, r.text

            sweep = {}
            for i, v in enumerate(VARIANTS):
                for j, lr in enumerate(SWEEP_LRS):
                    rid = create_run(
                        cl, f"{v}-lr{lr:g}", {"variant": v, "lr": lr, "preset": "sweep", "seed": 0}, None
                    )
                    ingest(cl, rid, RunShape(steps=40, layers=2, seed=10 * i + j, entropy=False))
                    status, summary = _sweep_outcome(v, lr)
                    finish(cl, rid, status, summary)
                    sweep[(v, lr)] = rid
            # A second seed stopped early by its alert policy: shown, but not part of the line.
            rid = create_run(
                cl, "qk_norm-lr0.01-s1", {"variant": "qk_norm", "lr": 1e-2, "preset": "sweep", "seed": 1}
            )
            ingest(cl, rid, RunShape(steps=20, layers=2, seed=99, entropy=False))
            finish(cl, rid, "stopped", {"final_loss": 5.0, "min_loss": 4.9, "diverged": False})
        yield Seeded(c, healthy, diverging, div_shape, sweep)
    finally:
        c.stop()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")  # Playwright's sync API keeps an event loop running meanwhile
def browser():  # noqa: ANN201
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        require_service("Chromium", "headless Chromium is not installed (scripts/services.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
