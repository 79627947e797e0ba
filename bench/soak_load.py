"""The soak's load: simulated training runs posting points and dashboard users polling the API.

Each :class:`Generator` thread is one run: it registers, produces one step every
``step_interval_s`` with the soak's series set (:func:`series_keys`), and posts every step
produced since the previous answer as one batch, the way :class:`trainer_hooks.client.Client`
does on the wire (capped by points and body size, the same ``batch_id`` on every retry,
jittered exponential backoff or the server's ``Retry-After``), with pre-encoded values so
that the load generator's CPU goes to HTTP and not to ``json.dumps``; its :class:`RunStats`
count what was offered, acknowledged and answered. Each :class:`Reader` thread polls the runs
list, a run's latest values and a 3-key series query. :class:`SoakConfig` holds the soak's
settings, the load's shape and the orchestration's (``bench/soak.py``) alike.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx

SITE_STATS = [(s, t) for s in ("qkv", "proj", "fc1", "fc2") for t in ("l2_mean", "l2_max")] + [
    ("attn", "logit_max"),
    ("attn", "entropy_mean"),
]
RUN_KEYS = ("loss", "lr", "grad_norm")
MAX_BATCH_POINTS = 1000  # the Client's defaults
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass
class SoakConfig:
    runs: int = 100
    duration_s: float = 600.0
    layers: int = 24
    step_interval_s: float = 0.1
    flush_interval_s: float = 1.0
    readers: int = 4
    reader_interval_s: float = 1.0
    workers: int = 1
    sample_interval_s: float = 2.0
    drain_timeout_s: float = 120.0
    db: str | None = None
    """A PostgreSQL URL to use as is; None creates (and afterwards drops) a dedicated database."""


@dataclass
class RunStats:
    run_id: str
    offered_values: int = 0
    acked_values: int = 0
    acked_in_load_phase: int = 0
    unacked_values: int = 0
    """Values of the batch in flight when the generator gave up: stored or not, never acknowledged."""
    steps_produced: int = 0
    steps_acked: int = 0
    registered: bool = False
    """The collector acknowledged the run's registration: readers may ask for it from then on."""
    retries: int = 0
    shed: int = 0
    """503 answers with ``Retry-After`` that said the collector is overloaded (load shedding)."""
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def _count(d: dict[str, int], status: int | None) -> None:
    k = str(status) if status is not None else "conn_error"
    d[k] = d.get(k, 0) + 1


def is_shed(r: httpx.Response) -> bool:
    """The collector refusing work it has no capacity for (``monitor.api.admission``)."""
    if r.status_code != 503 or "retry-after" not in r.headers:
        return False
    try:
        return str(r.json().get("detail", "")).startswith("collector overloaded")
    except ValueError:
        return False


def retry_after_s(r: httpx.Response | None) -> float | None:
    try:
        return float(r.headers["retry-after"]) if r is not None else None
    except (KeyError, ValueError):
        return None


def series_keys(layers: int) -> list[str]:
    return [f"layer.{i}.{s}.{t}" for i in range(layers) for s, t in SITE_STATS] + list(RUN_KEYS)


def value_pool(rng: random.Random, keys: list[str], n: int = 16) -> list[str]:
    """``n`` pre-encoded ``values`` objects with plausible magnitudes per statistic."""
    pool = []
    for _ in range(n):
        v = {}
        for k in keys:
            if k.endswith("logit_max"):
                v[k] = 8.0 + rng.random()
            elif k.endswith("entropy_mean"):
                v[k] = 2.0 + 0.1 * rng.random()
            elif k == "lr":
                v[k] = 3e-4
            elif k == "loss":
                v[k] = 3.0 + 0.2 * rng.random()
            else:
                v[k] = 1.0 + 0.05 * rng.random()
        pool.append(json.dumps(v, separators=(",", ":")))
    return pool


class Generator(threading.Thread):
    """One simulated run: produce steps on a clock, post them batched, retry until acknowledged."""

    def __init__(self, url: str, token: str, idx: int, cfg: SoakConfig, clock: dict) -> None:
        super().__init__(daemon=True, name=f"soak-run-{idx}")
        self.url, self.cfg, self.clock = url, cfg, clock
        self.rng = random.Random(idx)
        self.keys = series_keys(cfg.layers)
        self.pool = value_pool(self.rng, self.keys)
        self.stats = RunStats(run_id=f"soak-{idx:03d}-{uuid.uuid4().hex[:8]}")
        self.http = httpx.Client(
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(120.0, connect=10.0),
        )
        self.error: str | None = None

    def _post(self, method: str, path: str, body: bytes) -> httpx.Response | None:
        t = time.monotonic()
        try:
            r = self.http.request(method, self.url + path, content=body)
        except httpx.HTTPError:
            _count(self.stats.statuses, None)
            return None
        self.stats.latencies_ms.append(1000 * (time.monotonic() - t))
        _count(self.stats.statuses, r.status_code)
        if is_shed(r):
            self.stats.shed += 1
        return r

    def _send_until_acked(self, path: str, body: bytes, deadline: float) -> httpx.Response | None:
        delay = 0.2
        while time.monotonic() < deadline:
            r = self._post("POST", path, body)
            if r is not None and r.status_code < 300:
                return r
            if r is not None and 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                self.error = f"HTTP {r.status_code}: {r.text[:300]}"
                return None
            self.stats.retries += 1
            # As the Client does: jittered exponential backoff, or the server's Retry-After if longer.
            time.sleep(max(delay * random.uniform(0.5, 1.0), min(retry_after_s(r) or 0.0, 300.0)))
            delay = min(5.0, delay * 2)
        return None

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # reported, never silently lost
            self.error = f"{type(e).__name__}: {e}"

    def _run(self) -> None:
        cfg, s = self.cfg, self.stats
        reg = json.dumps({"id": s.run_id, "name": s.run_id, "config": {"variant": "baseline", "soak": True}})
        if self._send_until_acked("/api/v1/runs", reg.encode(), time.monotonic() + 120) is None:
            self.error = self.error or "registration never acknowledged"
            return
        s.registered = True
        start, end = self.clock["start"], self.clock["end"]
        time.sleep(self.rng.uniform(0, cfg.flush_interval_s))  # spread the runs' flushes
        path = f"/api/v1/runs/{s.run_id}/points"
        per_step = len(self.keys)
        sent = 0  # steps acknowledged so far (steps are produced in order: 0, 1, ...)
        while True:
            now = time.monotonic()
            produced = int((min(now, end) - start) / cfg.step_interval_s) + 1 if now >= start else 0
            s.steps_produced = produced
            s.offered_values = produced * per_step
            if sent < produced:
                parts, size = [], 40
                for step in range(sent, min(produced, sent + MAX_BATCH_POINTS)):
                    p = f'{{"step":{step},"rank":0,"values":{self.pool[step % len(self.pool)]}}}'
                    if parts and size + len(p) + 1 > MAX_BODY_BYTES:
                        break
                    parts.append(p)
                    size += len(p) + 1
                bid = f"{s.run_id}-{sent}"
                body = f'{{"batch_id":"{bid}","points":[{",".join(parts)}]}}'.encode()
                deadline = self.clock["hard_end"]
                r = self._send_until_acked(path, body, deadline)
                if r is None:
                    s.unacked_values = len(parts) * per_step
                    return
                s.acked_values += len(parts) * per_step
                if time.monotonic() <= end:
                    s.acked_in_load_phase += len(parts) * per_step
                sent += len(parts)
                s.steps_acked = sent
                continue  # a backlog is sent right away, as the client's sender does
            if now >= end:
                return
            time.sleep(cfg.flush_interval_s)


class Reader(threading.Thread):
    """Polls the runs list, a random run's latest values and a 3-key series query."""

    def __init__(self, url: str, token: str, gens: list[Generator], cfg: SoakConfig, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.gens, self.cfg, self.stop = url, gens, cfg, stop
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=120.0)
        self.latencies_ms: dict[str, list[float]] = {"runs": [], "latest": [], "series": []}
        self.statuses: dict[str, int] = {}
        self.rng = random.Random()

    def _get(self, kind: str, path: str, params: dict | None = None) -> None:
        t = time.monotonic()
        try:
            r = self.http.get(self.url + path, params=params)
        except httpx.HTTPError:
            _count(self.statuses, None)
            return
        self.latencies_ms[kind].append(1000 * (time.monotonic() - t))
        _count(self.statuses, r.status_code)

    def run(self) -> None:
        while not self.stop.wait(self.cfg.reader_interval_s * self.rng.uniform(0.5, 1.5)):
            ready = [g for g in self.gens if g.stats.registered]  # a run not yet registered is a 404
            if not ready:
                continue
            g = self.rng.choice(ready)
            rid = g.stats.run_id
            self._get("runs", "/api/v1/runs", {"limit": 50})
            self._get("latest", f"/api/v1/runs/{rid}/latest")
            keys = ",".join(self.rng.sample(g.keys, 3))
            self._get("series", f"/api/v1/runs/{rid}/series", {"keys": keys, "max_points": 500})
