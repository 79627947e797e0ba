"""Starting the collector as a process (``stabmon serve``): schema, local token, bind safety,
uvicorn.

Auth is never off. On the embedded default (SQLite) bound to loopback, the first start
creates a token for project ``STABMON_LOCAL_PROJECT`` and keeps it in a 0600 file next to
the database (``<db>.token``), so restarts reuse it and local clients can read it. A
non-loopback bind is refused while the database holds no active token: anyone on the
network could otherwise not authenticate at all, and creating a token silently for a
public address would hide who holds it.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from monitor.settings import Settings
from monitor.store import Store, migrate


class BindRefused(RuntimeError):
    """Binding to a non-loopback address without any API token."""


class RedactQueryTokens(logging.Filter):
    """Masks ``token=...`` in logged URLs: the dashboard accepts a sign-in link
    (``/?token=stm_...``) and uvicorn's access log would otherwise write the token to disk."""

    _RE = re.compile(r"(?i)([?&](?:token|access_token)=)[^&\s\"]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._RE.sub(r"\1<redacted>", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self._RE.sub(r"\1<redacted>", record.msg)
        return True


def uvicorn_log_config() -> dict:
    """uvicorn's logging configuration with :class:`RedactQueryTokens` on every handler (a
    dict, so ``--workers`` processes install it too)."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactQueryTokens"}
    for handler in cfg["handlers"].values():
        handler.setdefault("filters", []).append("redact_tokens")
    return cfg


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: assume it is reachable from elsewhere


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o600)  # in case the file already existed with wider permissions
    os.replace(tmp, path)


def ensure_local_token(store: Store, settings: Settings) -> tuple[str, Path] | None:
    """The local token and its file, creating both on first start; None when this is not an
    embedded SQLite database, or when tokens exist that were created by hand (``stabmon
    token create``) and no local token file exists."""
    path = settings.resolved_token_file()
    if path is None:
        return None
    if path.exists():
        token = path.read_text().strip()
        if store.resolve_token(token) is not None:
            return token, path
    elif store.has_active_tokens():
        return None
    token, _ = store.create_token(settings.local_project, label="local (stabmon serve)")
    _write_private(path, token)
    return token, path


@dataclass
class ServeInfo:
    url: str
    token: str | None
    token_file: Path | None


def check_bind(store: Store, host: str) -> None:
    if not is_loopback(host) and not store.has_active_tokens():
        raise BindRefused(
            f"refusing to listen on {host}: no API token exists, so nothing could authenticate. "
            "Create one first (`stabmon token create --project NAME --db URL`), or bind to 127.0.0.1."
        )


def prepare(settings: Settings) -> tuple[Store, ServeInfo]:
    """Everything before uvicorn starts: schema, store, local token, bind check."""
    migrate.prepare(settings.db, apply=settings.should_migrate_on_start)
    store = Store(
        settings.db, pool_size=settings.db_pool_size, sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s
    )
    local = ensure_local_token(store, settings) if is_loopback(settings.host) else None
    check_bind(store, settings.host)
    url = f"http://{settings.host}:{settings.port}"
    return store, ServeInfo(url, local[0] if local else None, local[1] if local else None)


def app_from_env():  # noqa: ANN201
    """uvicorn factory for worker processes: the settings come from the environment, which
    :func:`serve` fills in; the parent already prepared the schema."""
    from monitor.api import create_app

    return create_app(Settings(migrate_on_start=False))


def settings_environment(settings: Settings) -> dict[str, str]:
    """``STABMON_*`` variables from which ``Settings()`` reads ``settings`` back (JSON for the
    structured ones, such as ``STABMON_DETECTOR``)."""
    out = {}
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        out[f"STABMON_{name.upper()}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return out


def serve(settings: Settings, log_level: str = "info", workers: int = 1) -> None:
    """Run the collector until interrupted; ``workers`` > 1 runs that many processes (the
    collector is stateless apart from the database, so they share the port)."""
    import uvicorn

    from monitor.api import create_app

    store, info = prepare(settings)
    print(f"stabmon collector on {info.url} (database {settings.db}, {workers} worker(s))", flush=True)
    if info.token is not None:
        print(f"API token for project {settings.local_project!r} (kept in {info.token_file}):", flush=True)
        print(info.token, flush=True)
    if workers > 1:
        store.dispose()
        os.environ.update(settings_environment(settings))  # workers rebuild the same Settings
        uvicorn.run(
            "monitor.server:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=log_level,
            log_config=uvicorn_log_config(),
        )
        return
    app = create_app(settings, store=store)
    try:
        uvicorn.run(
            app, host=settings.host, port=settings.port, log_level=log_level, log_config=uvicorn_log_config()
        )
    finally:
        store.dispose()
