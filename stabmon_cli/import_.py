"""``stabmon import PATH...``: past runs into the collector, judged as if they were live.

A thin shell: `stabmon.history` reads and cleans each run (every file is read before anything is
sent, so bad input stops the command before a run is half-imported), `trainer_hooks.upload` sends
it through the collector client, and this module shows a progress bar and the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from stabmon_cli.history_options import (
    FORMAT_OPTION,
    MAP_OPTION,
    STEP_COLUMN_OPTION,
    load_histories,
    parse_config,
)


def import_cmd(
    paths: list[Path] = typer.Argument(
        ..., help="TensorBoard logdirs/event files, CSV/TSV, JSONL, trainer_state.json."
    ),
    url: str | None = typer.Option(None, "--url", envvar="STABMON_URL", help="Collector URL ($STABMON_URL)."),
    token: str | None = typer.Option(
        None, "--token", envvar="STABMON_TOKEN", help="Project token ($STABMON_TOKEN)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="Run name (one run only; default: the file's name)."
    ),
    config: list[str] = typer.Option(
        [], "--config", help="KEY=VALUE for the run's config (repeatable), or a JSON object."
    ),
    mapping: list[str] = MAP_OPTION,
    fmt: str | None = FORMAT_OPTION,
    step_column: str | None = STEP_COLUMN_OPTION,
    project: str | None = typer.Option(None, "--project", help="Must match the token's project when given."),
    run_id: str | None = typer.Option(
        None, "--run-id", help="Run id (one run only; default: from the content)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Read and report; send nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Import past runs into the collector: its detector judges them as it would have live."""
    from rich.console import Console

    console = Console(stderr=as_json, highlight=False)
    histories = load_histories(paths, mapping, fmt, step_column, name=name)
    if run_id is not None and len(histories) > 1:
        raise typer.BadParameter("--run-id names one run; give one path", param_hint="--run-id")
    extra = parse_config(config)
    results: list[dict[str, Any]] = []
    if dry_run:
        for h in histories:
            _report(console, h)
            results.append(_summary(h))
        _finish(results, as_json)
        return
    if not url:
        console.print("[red]error:[/] no collector URL: pass --url or set STABMON_URL")
        raise typer.Exit(2)
    failed = False
    for h in histories:
        _report(console, h)
        result = _send(console, h, url, token, extra, project, run_id)
        results.append({**_summary(h), **result})
        failed |= not result["complete"]
    _finish(results, as_json)
    if failed:
        raise typer.Exit(1)


def _send(console, h, url, token, extra, project, run_id) -> dict[str, Any]:  # noqa: ANN001
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainer_hooks.client import SpoolInUseError
    from trainer_hooks.upload import upload

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"  sending {h.name}", total=len(h.records))
        try:
            r = upload(
                h,
                url,
                token,
                config=extra,
                project=project,
                run_id=run_id,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        except (ValueError, SpoolInUseError) as e:  # a run the collector would refuse; a second import
            console.print(f"[red]error:[/] {h.source}: {e}", markup=True)
            raise typer.Exit(2) from e
    link = f"{url.rstrip('/')}/runs/{r.run_id}"
    first = {}
    for a in r.alerts:
        if a.status == "open" and a.severity not in first:
            first[a.severity] = a
    if r.complete:
        console.print(
            f"  stored {r.values:,} values ({r.points:,} steps) in {r.seconds:.1f} s "
            f"({r.values_per_minute:,.0f} values/min); run {r.run_id}, status {r.status}: {link}"
        )
    else:
        console.print(f"  [red]incomplete:[/] {r.problem}")
    for severity in ("warning", "critical"):
        a = first.get(severity)
        if a is not None:
            console.print(f"  first {severity} alert: step {a.step}, {a.rule}: {a.message}")
    if not first:
        console.print("  no alerts")
    return {
        "run_id": r.run_id,
        "url": link,
        "complete": r.complete,
        "problem": r.problem,
        "acknowledged": r.acknowledged,
        "seconds": round(r.seconds, 3),
        "values_per_minute": round(r.values_per_minute),
        "status": r.status,
        "first_alerts": {s: {"step": a.step, "rule": a.rule, "message": a.message} for s, a in first.items()},
    }


def _report(console, h) -> None:  # noqa: ANN001
    console.print(
        f"[bold]{h.name}[/] ({h.format}, {h.source}): {len(h.records):,} steps, {h.n_values:,} values, "
        f"series {', '.join(h.keys[:8])}{' ...' if len(h.keys) > 8 else ''}"
    )
    for note in h.notes:
        console.print(f"  note: {note}", markup=False)


def _summary(h) -> dict[str, Any]:  # noqa: ANN001
    return {
        "name": h.name,
        "source": h.source,
        "format": h.format,
        "steps": len(h.records),
        "values": h.n_values,
        "keys": h.keys,
        "restarts": h.restarts,
        "duplicates": h.duplicates,
        "non_finite": h.non_finite,
        "notes": h.notes,
    }


def _finish(results: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(results, indent=1))
