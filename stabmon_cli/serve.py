"""``stabmon serve``: run the collector (FastAPI under uvicorn). See :mod:`monitor.server`."""

from __future__ import annotations

import typer


def serve_cmd(
    db: str | None = typer.Option(
        None, "--db", help="Database URL (default: STABMON_DB, else ./.stabmon/stabmon.db)."
    ),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default 8321)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (uvicorn)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Run the collector: ingest API, series queries, alerts, /metrics."""
    from pydantic import ValidationError

    from monitor.server import BindRefused, serve
    from monitor.settings import Settings, settings_problems
    from monitor.store.migrate import SchemaNotReady

    overrides = {k: v for k, v in {"db": db, "host": host, "port": port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as e:  # e.g. STABMON_DETECTOR naming an unknown rule: refuse to start
        typer.echo(f"error: invalid settings: {settings_problems(e)}", err=True)
        raise typer.Exit(2) from e
    try:
        serve(settings, log_level=log_level, workers=workers)
    except (BindRefused, SchemaNotReady) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
