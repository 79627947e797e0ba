"""``stabmon token create|list|revoke``: API tokens, each scoped to one project."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage API tokens (stored hashed; shown once at creation).", no_args_is_help=True)

DB_OPTION = typer.Option(None, "--db", help="Database URL (default: STABMON_DB, else ./.stabmon/stabmon.db).")


def _store(db: str | None):  # noqa: ANN202
    from monitor.settings import Settings
    from monitor.store import Store, migrate

    settings = Settings(**({"db": db} if db else {}))
    migrate.prepare(settings.db, apply=settings.should_migrate_on_start)
    return Store(settings.db, pool_size=1)


@app.command("create")
def create_cmd(
    project: str = typer.Option(..., "--project", help="Project the token may read and write."),
    label: str | None = typer.Option(None, "--label", help="A note shown by `token list`."),
    db: str | None = DB_OPTION,
) -> None:
    """Create a token (and the project if new). The token is printed alone on the last line."""
    store = _store(db)
    try:
        token, info = store.create_token(project, label=label)
    finally:
        store.dispose()
    typer.echo(f"created token {info.id} ({info.prefix}...) for project {project!r}; it is shown only once:")
    typer.echo(token)


@app.command("list")
def list_cmd(
    project: str | None = typer.Option(None, "--project", help="Only this project's tokens."),
    db: str | None = DB_OPTION,
) -> None:
    """List tokens: id, project, prefix, created, revoked, label."""
    store = _store(db)
    try:
        infos = store.list_tokens(project)
    finally:
        store.dispose()
    typer.echo("id\tproject\tprefix\tcreated\trevoked\tlabel")
    for t in infos:
        revoked = t.revoked_at.isoformat(timespec="seconds") if t.revoked_at else "-"
        created = t.created_at.isoformat(timespec="seconds")
        typer.echo(f"{t.id}\t{t.project}\t{t.prefix}\t{created}\t{revoked}\t{t.label or ''}")


@app.command("revoke")
def revoke_cmd(
    token: str = typer.Argument(..., help="Token id, display prefix, or the token itself."),
    db: str | None = DB_OPTION,
) -> None:
    """Revoke a token; requests carrying it get 401 from then on."""
    from monitor.store import NotFound

    store = _store(db)
    try:
        info = store.revoke_token(token)
    except NotFound as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    finally:
        store.dispose()
    typer.echo(f"revoked token {info.id} ({info.prefix}...) of project {info.project!r}")
