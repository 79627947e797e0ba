"""``stabmon demo``: collector + two training runs + alerts, end to end (see :mod:`stabmon_cli.demo_runner`).

The command is the display: rich progress bars on stderr (loss and alerts per run, alerts
printed as they arrive), then a summary table and the dashboard links; ``--json`` prints the
summary as one JSON object on stdout instead. It exits by itself (``make demo`` relies on
that) unless ``--keep-serving`` is given.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer


class _Display:
    """Receives :func:`stabmon_cli.demo_runner.run_demo`'s progress events and draws them with rich."""

    def __init__(self, progress: Any, console: Any) -> None:
        self.progress = progress
        self.console = console
        self.tasks: list[Any] = []
        self.names: list[str] = []
        self.alerts: list[list[str]] = []

    def start(self, runs: list[Any], cfg: Any) -> None:
        for run in runs:
            self.names.append(run.variant)
            self.alerts.append([])
            self.tasks.append(
                self.progress.add_task(f"{run.variant:<12}", total=cfg.steps, loss="-", alerts="none")
            )

    def step(self, i: int, step: int, loss: float) -> None:
        self.progress.update(self.tasks[i], completed=step + 1, loss=f"{loss:8.4f}")

    def alert(self, i: int, alert: dict) -> None:
        if alert.get("status", "open") != "open":  # the client also reports resolutions
            self.console.print(
                f"[dim]resolved[/] [bold]{self.names[i]}[/] {alert['severity']} [bold]{alert['rule']}[/] "
                f"(opened at step {alert['step']}, last seen at step {alert.get('last_step', alert['step'])})"
            )
            return
        color = "red" if alert["severity"] == "critical" else "yellow"
        self.alerts[i].append(f"[{color}]{alert['rule']}@{alert['step']}[/]")
        self.progress.update(self.tasks[i], alerts=" ".join(self.alerts[i][-3:]))
        self.console.print(
            f"[{color}]ALERT[/] [bold]{self.names[i]}[/] {alert['severity']} [bold]{alert['rule']}[/] "
            f"at step {alert['step']}: {alert['message']}"
        )

    def done(self, i: int, outcome: dict) -> None:
        self.progress.update(self.tasks[i], completed=outcome.get("steps_run", 0))

    def error(self, i: int, text: str) -> None:
        self.console.print(f"[red]run {self.names[i]} failed:[/]\n{text}")


def _counts(alerts: list[dict]) -> str:
    crit = sum(a["severity"] == "critical" for a in alerts)
    warn = len(alerts) - crit
    return ", ".join([f"{crit} crit"] * bool(crit) + [f"{warn} warn"] * bool(warn)) or "none"


def _verdict(r: Any) -> str:
    if r.diverged and r.lead_steps is not None and r.lead_steps > 0:
        return (
            f"diverged at step {r.diverged_at}; first alert at step {r.first_alert_step}, "
            f"{r.lead_steps} steps earlier"
        )
    if r.diverged:
        first = (
            "no alert before" if r.first_alert_step is None else f"first alert at step {r.first_alert_step}"
        )
        return f"diverged at step {r.diverged_at}; {first}"
    return (
        f"did not diverge; alerts: {_counts(r.alerts).replace('crit', 'critical').replace('warn', 'warning')}"
    )


def _summary(report: Any, console: Any) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"stabmon demo, LR {report.runs[0].lr:g}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("run", "status", "diverged", "1st alert", "lead", "alerts", "loss"):
        table.add_column(col, no_wrap=True)
    for r in report.runs:
        final = f"{r.final_loss:.3f}" if isinstance(r.final_loss, (int, float)) else str(r.final_loss or "-")
        table.add_row(
            r.variant,
            r.error and "[red]error[/]" or r.status,
            "-" if r.diverged_at is None else str(r.diverged_at),
            "-" if r.first_alert_step is None else str(r.first_alert_step),
            "-" if r.lead_steps is None else str(r.lead_steps),
            _counts(r.alerts),
            final,
        )
    console.print(table)
    for r in report.runs:
        console.print(f"[bold]{r.variant}[/]: {_verdict(r)}")
        for a in r.alerts:
            color = "red" if a["severity"] == "critical" else "yellow"
            line = f"  [{color}]{a['severity']:<8}[/] {a['rule']:<16} step {a['step']:>5}: {a['message']}"
            console.print(line, no_wrap=True, overflow="ellipsis")
        # Links on lines of their own, never wrapped: they are meant to be copied.
        console.print(f"  dashboard: {r.dashboard_url}", soft_wrap=True)
        console.print(f"  API:       {r.api_url}", soft_wrap=True)
    console.print(f"API token: {report.token_file}", soft_wrap=True)
    console.print(f"The runs stay in {report.db}; to see them again:", soft_wrap=True)
    console.print(f"  {report.serve_command}", soft_wrap=True)
    console.print(f"demo wall time {report.wall_s:.0f} s")


def demo_db_path(value: str) -> Path:
    """The demo's SQLite file from ``--db``: a path, or the ``sqlite:///`` URL that ``stabmon
    serve --db`` takes (SQLAlchemy's form: ``sqlite:////abs/path``, ``sqlite:///relative``), so
    the command the demo prints can be pasted back. Another database URL is refused: the demo
    starts its own collector on an embedded file."""
    if "://" not in value:
        return Path(value)
    from sqlalchemy.engine import make_url  # the parser `serve` (monitor.store.engine) uses
    from sqlalchemy.exc import ArgumentError

    with contextlib.suppress(ArgumentError):
        u = make_url(value)
        if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
            return Path(u.database)
    raise typer.BadParameter(
        f"{value!r}: the demo runs its own collector on a SQLite file; give a path or a sqlite:/// URL"
    )


def demo_cmd(
    preset: str = typer.Option("small", help="Model size: tiny | small."),
    steps: int = typer.Option(300, help="Optimizer steps per run."),
    lr: float = typer.Option(0.3, help="Peak learning rate of both runs."),
    warmup: int = typer.Option(150, help="Linear warmup steps."),
    variants: str = typer.Option("baseline,qkv_norm", help="Comma-separated variants to train."),
    seed: int = typer.Option(0),
    db: str = typer.Option(
        ".stabmon/demo.db",
        help="SQLite file of the demo's collector (a path, or a sqlite:/// URL as `serve` takes).",
    ),
    port: int = typer.Option(0, help="Collector port (0: 8321 if free, else any free one)."),
    sequential: bool = typer.Option(False, help="Train the runs one after the other instead of in parallel."),
    keep_serving: bool = typer.Option(False, help="Keep the collector running afterwards, until Ctrl-C."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
) -> None:
    """Train baseline and a stable variant at a high LR against a local collector; show the alerts."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from stabmon_cli.demo_runner import DemoConfig, report_json, run_demo

    try:
        cfg = DemoConfig(
            preset=preset,
            steps=steps,
            lr=lr,
            warmup=warmup,
            variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
            seed=seed,
            db=demo_db_path(db),
            port=port,
            parallel=not sequential,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("alerts {task.fields[alerts]}"),
        TimeElapsedColumn(),
        console=console,
    )
    console.print(
        f"stabmon demo: {', '.join(cfg.variants)} on '{cfg.preset}' at LR {cfg.lr:g}, {cfg.steps} steps"
    )
    try:
        with progress:
            report, collector = run_demo(cfg, _Display(progress, console))
    except RuntimeError as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None

    try:
        if as_json:
            typer.echo(report_json(report))
        else:
            _summary(report, Console())
        if keep_serving:
            console.print(f"collector running at {report.collector}; press Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                collector.process.wait()
    finally:
        collector.stop()
    if any(r.error for r in report.runs):
        raise typer.Exit(1)
