"""What ``stabmon import`` and ``stabmon backtest`` share: reading the runs the user names.

Both take the same paths and the same reading options (``--map``, ``--format``,
``--step-column``), and both read every run before doing anything with one, so a bad file stops
the command with one clear line (file and line, entry or tag) before a run is half-imported or
half-scored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

MAP_OPTION = typer.Option(
    [], "--map", help="SOURCE=KEY: name a column's series (SOURCE=- skips it); repeatable."
)
FORMAT_OPTION = typer.Option(
    None, "--format", help="tensorboard, csv, tsv, jsonl, json or hf_trainer_state (default: detected)."
)
STEP_COLUMN_OPTION = typer.Option(None, "--step-column", help="The step column (default: step, _step, ...).")


def load_histories(
    paths: list[Path], mapping: list[str], fmt: str | None, step_column: str | None, name: str | None = None
) -> list[Any]:
    """Every run under ``paths``, read and cleaned; exits with status 2 on bad input."""
    from stabmon.history import HistoryError, discover, parse_map, read_history

    try:
        names = parse_map(mapping)
        runs = discover(paths)
        if name is not None and len(runs) > 1:
            raise HistoryError(f"--name names one run, but the paths hold {len(runs)}")
        histories = [read_history(p, fmt=fmt, names=names, name=name, step_column=step_column) for p in runs]
    except HistoryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    taken: set[str] = set()
    for h in histories:  # two runs with one name (two checkpoints' states): number the later ones
        base, n = h.name, 1
        while h.name in taken:
            n += 1
            h.name = f"{base}-{n}"
        taken.add(h.name)
    return histories


def parse_config(items: list[str]) -> dict[str, Any]:
    """``--config`` values: ``KEY=VALUE`` (VALUE as JSON when it parses, else text) or a JSON object."""
    out: dict[str, Any] = {}
    for item in items:
        text = item.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise typer.BadParameter(
                    f"{item!r} is not a JSON object: {e.msg}", param_hint="--config"
                ) from None
            if not isinstance(obj, dict):
                raise typer.BadParameter(f"{item!r} is not a JSON object", param_hint="--config")
            out.update(obj)
            continue
        key, eq, raw = text.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE or a JSON object", param_hint="--config")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
