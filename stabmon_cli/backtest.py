"""``stabmon backtest PATH... [--set rule.key=value]``: a detector setting judged on your own runs.

A thin shell over `stabmon.backtest`: reads the runs (the same readers and options as ``stabmon
import``), replays them through the pure detector offline (no collector), prints each run's
first alerts with their evidence and, for labelled runs, the detection benchmark's recall /
false-alarm / lead table. ``--json`` prints the whole report for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from stabmon_cli.history_options import FORMAT_OPTION, MAP_OPTION, STEP_COLUMN_OPTION, load_histories
from stabmon_cli.project import parse_assignments


def backtest_cmd(
    paths: list[Path] = typer.Argument(
        ..., help="Runs: TensorBoard logdirs, CSV/TSV, JSONL, trainer_state.json."
    ),
    set_: list[str] = typer.Option([], "--set", help="rule.field=VALUE detector override (repeatable)."),
    diverged: list[str] = typer.Option(
        [], "--diverged", help="RUN=STEP: the run diverged at STEP (RUN=no: it did not); repeatable."
    ),
    auto_label: bool = typer.Option(
        True,
        "--auto-label/--no-auto-label",
        help="Label unmarked runs with the divergence definition (off: unmarked runs did not diverge).",
    ),
    mapping: list[str] = MAP_OPTION,
    fmt: str | None = FORMAT_OPTION,
    step_column: str | None = STEP_COLUMN_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Replay past runs through the detector offline: first alerts, recall, false alarms, lead."""
    from stabmon.backtest import backtest, parse_marks

    overrides = parse_assignments(set_)
    histories = load_histories(paths, mapping, fmt, step_column)
    try:
        report = backtest(histories, overrides, parse_marks(diverged), auto_label=auto_label)
    except ValueError as e:  # an unknown rule or field in --set, a bad or unknown --diverged
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()) or "built-in defaults"
    typer.echo(f"detector: {settings}\n")
    for run in report["runs"]:
        verdict = (
            f"diverged at step {run['diverged_at']}"
            if run["diverged_at"] is not None
            else ("did not diverge" if run["label"] != "unlabelled" else "not labelled")
        )
        typer.echo(f"{run['name']} ({run['steps']} steps): {verdict} [{run['label']}: {run['reason']}]")
        for title, f in (("first alert   ", run["first_alert"]), ("first critical", run["first_critical"])):
            if f is None:
                typer.echo(f"  {title}: none")
                continue
            lead = (
                f", {run['lead']} steps before the divergence"
                if title.startswith("first crit") and run["lead"] is not None
                else ""
            )
            typer.echo(f"  {title}: step {f['step']} {f['severity']} {f['rule']}{lead}: {f['message']}")
            typer.echo(f"    evidence: {_short(f['evidence'])}")
    if report["table"]:
        typer.echo(f"\n{report['scored_runs']} labelled runs:\n")
        typer.echo(report["table"])
    else:
        typer.echo("\nno labelled runs: mark them with --diverged RUN=STEP (or RUN=no) to score the setting")


def _short(evidence: dict, limit: int = 300) -> str:
    text = json.dumps(evidence, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."
