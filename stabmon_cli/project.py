"""``stabmon project detector PROJECT``: show or change a project's detector overrides.

``--set rule.field=VALUE`` (VALUE is JSON: ``8``, ``null``, ``["loss"]``; anything that is not
JSON is taken as a string, so ``--set entropy_collapse.max_severity=warning`` works),
``--unset rule.field`` (or a whole ``rule``), ``--clear``; all of one call apply together or
not at all. The new overrides are checked on top of the collector-wide ones of this
environment (``STABMON_DETECTOR``). They apply to runs registered afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import typer

app = typer.Typer(help="Manage projects.", no_args_is_help=True)

DB_OPTION = typer.Option(None, "--db", help="Database URL (default: STABMON_DB, else ./.stabmon/stabmon.db).")


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["loss_spike.z_warning=8", "logit_max.max_severity=warning"]`` -> dotted overrides."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise typer.BadParameter(f"{item!r}: expected rule.field=VALUE", param_hint="--set")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _format_value(value: Any) -> str:
    return json.dumps(value)


@app.command("detector")
def detector_cmd(
    project: str = typer.Argument(..., help="Project name (as in `stabmon token create --project`)."),
    set_: list[str] = typer.Option([], "--set", help="rule.field=VALUE (repeatable)."),
    unset: list[str] = typer.Option([], "--unset", help="rule.field, or a whole rule (repeatable)."),
    clear: bool = typer.Option(False, "--clear", help="Drop all of the project's overrides first."),
    show: bool = typer.Option(False, "--show", help="Also print every rule's effective settings (JSON)."),
    db: str | None = DB_OPTION,
) -> None:
    """Show the project's detector overrides (and the collector-wide ones beneath them), after
    applying --clear, --unset and --set in that order."""
    from pydantic import ValidationError

    from monitor.detector_settings import DetectorSettings
    from monitor.settings import Settings, settings_problems
    from monitor.store import NotFound, Store, migrate
    from stabmon.detect.layers import LayerError

    assignments = parse_assignments(set_)
    try:
        settings = Settings(**({"db": db} if db else {}))
    except ValidationError as e:
        typer.echo(f"error: invalid settings: {settings_problems(e)}", err=True)
        raise typer.Exit(2) from e
    migrate.prepare(settings.db, apply=settings.should_migrate_on_start)
    store = Store(settings.db, pool_size=1)
    try:
        detector = DetectorSettings(store, settings.detector)
        pid = store.find_project(project).id
        if assignments or unset or clear:
            layered = detector.edit_project(pid, set_=assignments, unset=unset, clear=clear)
        else:
            layered = detector.project(pid)
    except NotFound as e:
        typer.echo(f"error: {e} (a project is created with its first token: stabmon token create)", err=True)
        raise typer.Exit(1) from e
    except LayerError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    finally:
        store.dispose()

    if assignments or unset or clear:
        typer.echo(f"updated project {project!r}: runs registered from now on use these settings")
    if not layered.sources:
        typer.echo(f"project {project!r}: no detector overrides (built-in defaults)")
    else:
        from stabmon.detect.layers import dotted

        values = {
            name: dotted(layer) for name, layer in layered.layers.items() if name in ("collector", "project")
        }
        typer.echo("key\tvalue\tfrom")
        for key, source in layered.sources.items():
            typer.echo(f"{key}\t{_format_value(values[source][key])}\t{source}")
    if layered.problem is not None:
        typer.echo(f"warning: {layered.problem}", err=True)
    if show and layered.config is not None:
        typer.echo(json.dumps(layered.config.model_dump(mode="json"), indent=2))
