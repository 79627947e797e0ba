"""`stabmon demo` end to end on the tiny preset: a real collector process, real training runs
streaming through the real client, the summary read back from the collector; plus the library
entry point with a recording display (sequential mode, in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.store import Store
from stabmon_cli.demo_runner import DemoConfig, free_port, report_json, run_demo

pytestmark = pytest.mark.integration

RUN_KEYS = {
    "variant", "lr", "run_id", "status", "diverged", "diverged_at", "first_alert_step", "lead_steps",
    "alerts", "final_loss", "min_loss", "steps_run", "points_last_step", "series", "dashboard_url",
    "api_url", "error",
}  # fmt: skip


def check_against_database(db_url: str, token: str, run: dict, steps: int) -> None:
    """What the collector stored, read straight from its SQLite file."""
    store = Store(db_url, pool_size=1)
    try:
        project = store.resolve_token(token)
        stored = store.get_run(project.id, run["run_id"])
        assert stored.last_step == steps - 1
        assert stored.status == run["status"] and stored.status in ("finished", "diverged")
        assert stored.config["variant"] == run["variant"] and stored.config["lr"] == run["lr"]
        assert stored.summary["steps_run"] == steps
        alerts = store.list_alerts(project.id, run["run_id"])
        assert sorted((a.rule, a.severity, a.step) for a in alerts) == sorted(
            (a["rule"], a["severity"], a["step"]) for a in run["alerts"]
        )
    finally:
        store.dispose()


def test_demo_cli_json_on_tiny(tmp_path):
    db = tmp_path / "demo.db"
    steps = 20
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stabmon_cli",
            "demo",
            "--json",
            "--preset",
            "tiny",
            "--steps",
            str(steps),
            "--lr",
            "0.01",
            "--warmup",
            "5",
            "--db",
            str(db),
            "--port",
            str(free_port(0)),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report) == {"collector", "db", "token_file", "wall_s", "runs", "serve_command"}
    assert report["serve_command"].startswith(f"stabmon serve --db sqlite:///{db.resolve()}")
    port = report["collector"].rsplit(":", 1)[1]
    assert port == "8321" or report["serve_command"].endswith(f" --port {port}")
    assert [r["variant"] for r in report["runs"]] == ["baseline", "qkv_norm"]
    token = (tmp_path / "demo.db.token").read_text().strip()
    for run in report["runs"]:
        assert set(run) == RUN_KEYS
        assert run["error"] is None and run["lr"] == 0.01 and run["steps_run"] == steps
        assert isinstance(run["diverged"], bool)
        assert run["points_last_step"] == steps - 1  # the collector has every step
        assert run["series"] > 10  # loss, lr, grad_norm and per-layer statistics
        assert run["dashboard_url"].endswith(f"/runs/{run['run_id']}?token={token}")
        for a in run["alerts"]:
            assert {"rule", "severity", "step"} <= set(a) and a["severity"] in ("warning", "critical")
        if run["alerts"]:
            assert run["first_alert_step"] == min(a["step"] for a in run["alerts"])
        check_against_database(f"sqlite:///{db}", token, run, steps)
    assert "serve it again" not in proc.stdout  # --json: stdout is the JSON document alone


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, runs, cfg) -> None:
        self.events.append(("start", [r.variant for r in runs], cfg.steps))

    def step(self, i, step, loss) -> None:
        self.events.append(("step", i, step))

    def alert(self, i, alert) -> None:
        self.events.append(("alert", i, alert["rule"]))

    def done(self, i, outcome) -> None:
        self.events.append(("done", i, outcome["status"]))

    def error(self, i, text) -> None:
        self.events.append(("error", i, text))


def test_run_demo_sequential_in_process(tmp_path):
    cfg = DemoConfig(
        preset="tiny", steps=8, lr=0.01, warmup=2, variants=("qkv_norm",), db=tmp_path / "d.db",
        port=free_port(0), parallel=False,
    )  # fmt: skip
    display = Recorder()
    report, collector = run_demo(cfg, display)
    try:
        assert collector.process.poll() is None  # still serving until the caller stops it
    finally:
        collector.stop()
    assert collector.process.poll() is not None
    assert display.events[0] == ("start", ["qkv_norm"], 8)
    assert [e[2] for e in display.events if e[0] == "step"] == list(range(8))
    assert display.events[-1] == ("done", 0, "finished")
    (run,) = report.runs
    assert run.points_last_step == 7 and run.status == "finished" and not run.diverged
    doc = json.loads(report_json(report))
    assert doc["runs"][0]["variant"] == "qkv_norm"


def test_demo_config_rejects_bad_input():
    with pytest.raises(ValueError, match="steps"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        DemoConfig(lr=-1)
    with pytest.raises(ValueError, match="variant"):
        DemoConfig(variants=())


def test_display_prints_a_resolution_as_such_not_as_a_new_alert():
    from rich.console import Console
    from rich.progress import Progress

    from stabmon_cli.demo import _Display

    console = Console(record=True, width=200)
    display = _Display(Progress(console=console), console)
    display.names, display.alerts, display.tasks = ["baseline"], [[]], [display.progress.add_task("b")]
    alert = {"rule": "grad_spike", "severity": "warning", "step": 75, "last_step": 75, "message": "m"}
    display.alert(0, {**alert, "status": "open"})
    display.alert(0, {**alert, "status": "resolved"})
    text = console.export_text()
    assert text.count("ALERT") == 1 and "resolved baseline warning grad_spike (opened at step 75" in text
    assert display.alerts == [["[yellow]grad_spike@75[/]"]]


def test_demo_db_takes_a_path_or_the_sqlite_url_serve_takes():
    import typer

    from stabmon_cli.demo import demo_db_path

    assert demo_db_path(".stabmon/demo.db") == Path(".stabmon/demo.db")
    assert demo_db_path("sqlite:////tmp/x/demo.db") == Path("/tmp/x/demo.db")
    assert demo_db_path("sqlite:///rel/demo.db") == Path("rel/demo.db")
    for bad in ("postgresql://u@h/db", "sqlite:///"):
        with pytest.raises(typer.BadParameter, match="SQLite file"):
            demo_db_path(bad)
