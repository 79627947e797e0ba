"""A real collector process for the fault, security and load tests: ``python -m stabmon_cli serve``
on a free port, started, waited for, killed hard (SIGKILL) and restarted on the same database
and port. Also small HTTP helpers shared by those tests (polling, reading whole series)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from stabmon.net import free_port


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class Collector:
    """One ``stabmon serve`` process; ``start()`` again after ``kill()`` reuses db and port."""

    def __init__(self, workdir: Path, db: str, port: int | None = None, env: dict[str, str] | None = None):
        self.workdir, self.db = Path(workdir), db
        self.port = port or free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> Collector:
        log = self.workdir / f"collector-{len(self.logs)}.log"
        self.logs.append(log)
        cmd = [sys.executable, "-m", "stabmon_cli", "serve", "--db", self.db, "--port", str(self.port)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

        def up() -> bool:
            assert self.proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=timeout, interval=0.1), f"collector did not come up: {log.read_text()}"
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, open transactions die with the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())


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
