"""``stabmon demo``: the whole loop on one machine, in a few minutes.

It starts the collector (``python -m stabmon_cli serve``) on the embedded SQLite database
(``./.stabmon/demo.db`` by default) on a free loopback port, then trains the same model at the
same high learning rate twice, in two processes side by side: the pre-LayerNorm ``baseline``
and a stable variant (``qkv_norm`` by default, LayerNorm on the whole QKV output, which
Rybakov et al. 2024 found to tolerate a 1.5x higher LR than QK-LayerNorm alone). Both stream
their per-layer statistics through the real client to the real collector, whose detector
raises alerts; live progress bars show loss and alerts. At the end
it reads the alerts back from the collector, compares the first alert with the step where the
loss diverged (:mod:`stabmon.divergence`), prints a summary (or JSON with ``--json``) and the
dashboard links, and stops the collector, printing the command that serves the same
database again (or keeps serving with ``--keep-serving``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stabmon import net
from stabmon.wire import json_safe
from stabmon_cli import collector_process
from stabmon_cli.collector_process import Collector

DEFAULT_DIR = Path(".stabmon")
DEFAULT_VARIANTS = ("baseline", "qkv_norm")


@dataclass
class DemoConfig:
    preset: str = "small"
    steps: int = 300
    lr: float = 0.3
    """Peak LR: on ``small`` with this warmup, ``baseline`` learns, then diverges as the LR ramps
    up (step 133), while ``qkv_norm`` keeps improving (measured; see docs/alerts.md)."""
    warmup: int = 150
    grad_clip: float = 1.0
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    seed: int = 0
    db: Path = DEFAULT_DIR / "demo.db"
    """The SQLite file the collector uses; kept afterwards, so ``stabmon serve`` shows the runs."""
    port: int = 0
    """0: 8321 (``stabmon serve``'s default) when free, else any free port."""
    parallel: bool = True
    """Train the runs in parallel processes (one torch thread each) rather than one by one."""
    batch_size: int | None = None
    monitor_every: int = 1
    startup_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.variants:
            raise ValueError("at least one variant is needed")
        self.variants = tuple(self.variants)
        self.db = Path(self.db)

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db.resolve()}"

    def train_config(self, variant: str) -> dict[str, Any]:
        return {
            "variant": variant,
            "preset": self.preset,
            "lr": self.lr,
            "steps": self.steps,
            "warmup": self.warmup,
            "grad_clip": self.grad_clip,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "monitor_every": self.monitor_every,
            "eval_every": 0,
            "threads": 1,
            "name": f"demo-{variant}-lr{self.lr:g}",
        }


# ---------------------------------------------------------------------------------------
# The collector as a child process
# ---------------------------------------------------------------------------------------
DEFAULT_PORT = 8321  # `stabmon serve`'s default: the demo's links keep working when it is re-served


def free_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` (8321, ``stabmon serve``'s default) if free, else any free loopback port."""
    return net.free_port(preferred)


def start_collector(db: Path, port: int = 0, timeout: float = 60.0) -> Collector:
    """``python -m stabmon_cli serve`` on ``db`` (SQLite) at 127.0.0.1 (8321 when ``port`` is 0
    and it is free); waits until it answers with this database's local token. Raises
    RuntimeError with the server's log if it does not start."""
    db = Path(db).resolve()
    return collector_process.start_collector(
        db,
        port,
        timeout,
        preferred_port=DEFAULT_PORT,
        require_token=True,
        log_name=f"{db.stem}.collector",
        log_level="warning",
    )


# ---------------------------------------------------------------------------------------
# One training run (runs in a child process, or in this one)
# ---------------------------------------------------------------------------------------
def train_one(index: int, train_kwargs: dict[str, Any], url: str, token: str, run_id: str,
              spool_dir: str, events: Any) -> None:  # fmt: skip
    """Train one run against the collector, reporting progress and alerts to ``events``
    (a queue): ``("step", i, step, loss)``, ``("alert", i, alert)``, ``("done", i, summary)``
    or ``("error", i, text)``."""
    try:
        import torch

        from trainer_hooks.lab.remote import run_monitored
        from trainer_hooks.lab.train import TrainConfig

        torch.set_num_threads(1)
        cfg = TrainConfig(**train_kwargs)

        def progress(info: Any) -> None:
            events.put(("step", index, info.step, info.loss))

        def on_alert(alert: Any) -> None:
            events.put(("alert", index, alert.model_dump(mode="json")))

        run = run_monitored(
            cfg,
            collector=url,
            token=token,
            run_id=run_id,
            callbacks=[progress],
            alert_listeners=[on_alert],
            run_config={"demo": True},
            spool_dir=spool_dir,
            flush_interval_s=0.5,
        )
        events.put(("done", index, {"status": run.status, **run.result.to_dict()}))
    except BaseException:
        events.put(("error", index, traceback.format_exc()))


# ---------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------
@dataclass
class RunReport:
    variant: str
    lr: float
    run_id: str
    status: str = "?"
    diverged: bool = False
    diverged_at: int | None = None
    first_alert_step: int | None = None
    lead_steps: int | None = None
    """``diverged_at - first_alert_step``: how early the first alert came (None if either is missing)."""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    final_loss: Any = None
    min_loss: Any = None
    steps_run: int = 0
    points_last_step: int | None = None
    """The last step the collector stored for the run: evidence the data arrived."""
    series: int = 0
    dashboard_url: str = ""
    api_url: str = ""
    error: str | None = None


@dataclass
class DemoReport:
    collector: str
    db: str
    token_file: str
    wall_s: float
    runs: list[RunReport]
    serve_command: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_report(url: str, token: str, run: RunReport, outcome: dict[str, Any] | None) -> RunReport:
    """Fill ``run`` from the training outcome and what the collector stored."""
    import httpx

    if outcome is not None:
        run.status = outcome.get("status", "?")
        run.diverged = bool(outcome.get("diverged"))
        run.diverged_at = outcome.get("diverged_at")
        run.final_loss = outcome.get("final_loss")
        run.min_loss = outcome.get("min_loss")
        run.steps_run = int(outcome.get("steps_run") or 0)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10.0) as http:
        r = http.get(f"/api/v1/runs/{run.run_id}")
        if r.status_code == 200:
            info = r.json()
            run.points_last_step = info.get("last_step")
            run.status = info.get("status", run.status)
        r = http.get(f"/api/v1/runs/{run.run_id}/alerts")
        if r.status_code == 200:
            run.alerts = [
                {"rule": a["rule"], "severity": a["severity"], "step": a["step"], "last_step": a["last_step"],
                 "status": a["status"], "message": a["message"]}
                for a in sorted(r.json(), key=lambda a: (a["step"], a["id"]))
            ]  # fmt: skip
        r = http.get(f"/api/v1/runs/{run.run_id}/keys")
        if r.status_code == 200:
            body = r.json()
            run.series = len(body if isinstance(body, list) else body.get("keys", []))
    if run.alerts:
        run.first_alert_step = run.alerts[0]["step"]
    if run.diverged_at is not None and run.first_alert_step is not None:
        run.lead_steps = run.diverged_at - run.first_alert_step
    run.dashboard_url = f"{url}/runs/{run.run_id}?token={token}"
    run.api_url = f"{url}/api/v1/runs/{run.run_id}"
    return run


def run_demo(cfg: DemoConfig, display: Any = None) -> tuple[DemoReport, Collector]:
    """Start the collector, train every variant, gather the report. The collector is left
    running: the caller stops it (or keeps serving). ``display`` receives progress events
    (``start(runs)``, ``step(i, step, loss)``, ``alert(i, alert)``, ``done(i, outcome)``)."""
    t0 = time.monotonic()
    collector = start_collector(cfg.db, cfg.port, cfg.startup_timeout_s)
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        runs = [RunReport(v, cfg.lr, f"demo-{v}-{stamp}-{os.getpid()}"[:64]) for v in cfg.variants]
        spool = str(cfg.db.resolve().parent / "spool")
        if display is not None:
            display.start(runs, cfg)
        outcomes = _train_all(cfg, runs, collector, spool, display)
        for i, run in enumerate(runs):
            out = outcomes.get(i)
            if isinstance(out, str):
                run.error = out
                out = None
            collect_report(collector.url, collector.token, run, out)
    except BaseException:
        collector.stop()
        raise
    port = int(collector.url.rsplit(":", 1)[1])
    serve_command = f"stabmon serve --db {cfg.db_url}" + ("" if port == DEFAULT_PORT else f" --port {port}")
    report = DemoReport(
        collector=collector.url,
        db=str(cfg.db.resolve()),
        token_file=str(collector.token_file),
        wall_s=round(time.monotonic() - t0, 1),
        runs=runs,
        serve_command=serve_command,
    )
    return report, collector


def _train_all(cfg: DemoConfig, runs: list[RunReport], collector: Collector, spool: str,
               display: Any) -> dict[int, Any]:  # fmt: skip
    outcomes: dict[int, Any] = {}
    if not cfg.parallel:
        events: Any = queue.Queue()
        for i, run in enumerate(runs):
            train_one(
                i, cfg.train_config(run.variant), collector.url, collector.token, run.run_id, spool, events
            )
            _drain(events, outcomes, display, block=False)
        return outcomes
    ctx = mp.get_context("spawn")  # a clean interpreter per run: no fork of torch's thread pools
    events = ctx.Queue()
    procs = [
        ctx.Process(
            target=train_one,
            args=(
                i,
                cfg.train_config(run.variant),
                collector.url,
                collector.token,
                run.run_id,
                spool,
                events,
            ),
            name=f"stabmon-demo-{run.variant}",
            daemon=True,
        )
        for i, run in enumerate(runs)
    ]
    for p in procs:
        p.start()
    try:
        while len(outcomes) < len(procs):
            _drain(events, outcomes, display, block=True)
            for i, p in enumerate(procs):
                if i not in outcomes and not p.is_alive() and p.exitcode not in (0, None):
                    _drain(events, outcomes, display, block=False)
                    outcomes.setdefault(i, f"training process exited with code {p.exitcode}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(5)
    return outcomes


def _drain(events: Any, outcomes: dict[int, Any], display: Any, block: bool) -> None:
    while True:
        try:
            ev = events.get(timeout=0.2) if block else events.get_nowait()
        except queue.Empty:
            return
        block = False
        kind, i = ev[0], ev[1]
        if kind in ("done", "error"):
            outcomes[i] = ev[2]  # a summary dict, or the error's text
        if display is not None:
            getattr(display, kind)(i, *ev[2:])


def report_json(report: DemoReport) -> str:
    """The ``--json`` document: per run ``variant, lr, diverged, diverged_at, first_alert_step,
    alerts (rule, severity, step)`` and more; valid JSON (no NaN)."""

    return json.dumps(json_safe(report.to_dict()), allow_nan=False)
