"""A real Prometheus scrapes a real collector (uvicorn on a free port) and a stabmon series is
read back through Prometheus' HTTP query API. Without the ``prometheus`` binary it is skipped
locally and fails in CI (scripts/services.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import httpx
import pytest
import uvicorn

from monitor.api import create_app
from monitor.settings import Settings
from stabmon.net import free_port
from tests._services import require_service

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]


@pytest.fixture
def collector(tmp_path):  # noqa: ANN201
    settings = Settings(db=f"sqlite:///{tmp_path / 'c.db'}", metrics_token="scrape-me")
    app = create_app(settings)
    token, _ = app.state.store.create_token("p")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", token
    server.should_exit = True
    thread.join(timeout=10)


def test_prometheus_scrapes_the_collector(collector, tmp_path):
    prom = shutil.which("prometheus")
    if prom is None:
        require_service("prometheus", "the binary is not installed (scripts/services.sh installs it)")
    url, token = collector
    h = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{url}/api/v1/runs", json={"id": "r1", "name": "r1"}, headers=h).raise_for_status()
    pts = [{"step": 41, "values": {"layer.2.fc2.l2_mean": 3.25, "loss": 2.0}}]
    httpx.post(
        f"{url}/api/v1/runs/r1/points", json={"batch_id": "b", "points": pts}, headers=h
    ).raise_for_status()

    target = url.removeprefix("http://")
    (tmp_path / "prom.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: stabmon\n    metrics_path: /metrics\n"
        "    authorization:\n      credentials: scrape-me\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            prom,
            f"--config.file={tmp_path / 'prom.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        query = 'stabmon_series_latest{run="r1",layer="2",site="fc2",stat="l2_mean"}'
        deadline, result = time.monotonic() + 60, []
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=2)
                result = r.json()["data"]["result"] if r.status_code == 200 else []
            except httpx.HTTPError:
                continue
        assert result, "Prometheus never returned the stabmon series"
        assert float(result[0]["value"][1]) == 3.25
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query", params={"query": 'stabmon_run_last_step{run="r1"}'}
        )
        assert float(r.json()["data"]["result"][0]["value"][1]) == 41
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
