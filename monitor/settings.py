"""The collector's configuration: one pydantic-settings object (environment prefix ``STABMON_``)
shared by the FastAPI app, the ``stabmon serve|token|db`` commands and Alembic's ``env.py``.

The database URL is ``STABMON_DB``. Its default is an SQLite file in ``./.stabmon/stabmon.db``
(relative to the working directory, so a project checkout keeps its own runs, next to its
code and ignored by git); set it to ``postgresql+psycopg://user@host/db`` for a shared collector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from monitor.alerts.settings import WebhookSettings

DEFAULT_DB_DIR = Path(".stabmon")
DEFAULT_DB_URL = f"sqlite:///{DEFAULT_DB_DIR / 'stabmon.db'}"
DEFAULT_INGEST_SLOTS = 3


class Settings(BaseSettings, WebhookSettings):
    """Every knob of the collector; each field reads ``STABMON_<NAME>`` from the environment.
    The webhook fields (``webhook_urls``, ``public_url``, ...) come from :class:`WebhookSettings`."""

    model_config = SettingsConfigDict(env_prefix="STABMON_", extra="ignore")

    db: str = DEFAULT_DB_URL
    """SQLAlchemy URL: ``sqlite:///path/to.db`` or ``postgresql+psycopg://user:pw@host:5432/db``."""
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=1, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest accepted request body; larger ones get 413 before any parsing."""
    migrate_on_start: bool | None = None
    """Apply pending migrations when the app starts. None (default) means: yes for SQLite
    (the embedded single-user case), no for PostgreSQL, where the server checks that the
    schema is at head and refuses to start otherwise (run ``stabmon db upgrade``)."""
    metrics_token: str | None = None
    """When set, ``GET /metrics`` requires ``Authorization: Bearer <metrics_token>``;
    when unset it is open (Prometheus scrapes it; it holds run ids and statistic values only)."""
    active_run_window_s: float = Field(default=3600.0, gt=0)
    """A run counts as active for ``/metrics`` if it is running and got data this recently."""
    local_project: str = "default"
    """Project of the token that ``stabmon serve`` creates on first start of an embedded SQLite DB."""
    token_file: Path | None = None
    """Where that local token is kept (mode 0600); default: next to the SQLite file, ``<db>.token``."""
    db_pool_size: int = Field(default=8, ge=1)
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)
    """SQLite: how long a write waits for another writer's lock (``BEGIN EXCLUSIVE`` from a
    backup job, a second collector) before the request fails with 503 and ``Retry-After``."""
    max_series_per_run: int = Field(default=10_000, ge=1)
    """Distinct series keys per run; a batch that would add more is refused (422) whole."""
    retry_after_s: int = Field(default=5, ge=1)
    """``Retry-After`` sent with 503: the database is unreachable, or the collector overloaded."""
    ingest_slots: int | None = Field(default=None, ge=1)
    """Batches one worker process stores at once; default 3 (at most ``db_pool_size``, so the
    other connections serve reads and token checks). A worker runs Python on one core: one
    batch computes while the others wait for the database, and more slots only share that core
    (in the soak at 10 steps/s, 8 slots instead of 3 stored as much with 2.5x the p50 latency and
    3x the p99). See :mod:`monitor.api.admission`."""
    ingest_queue_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    """Request bodies that may wait for a slot, in bytes summed over the waiting requests (per
    worker); past it a batch is answered 503 at once."""
    ingest_wait_s: float = Field(default=5.0, ge=0)
    """How long a batch waits for a slot before it is answered 503 with ``Retry-After``: long
    enough for the jitter of a busy machine (a 2 s wait refused a quarter of the batches of a
    soak the collector kept up with, at a load average of 13 on 2 cores), well under a client's
    read timeout (30 s)."""
    detector: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    """Collector-wide detector overrides (JSON, nested or dotted keys, as in a run's
    ``config.detector``), e.g. ``{"entropy_collapse": {"max_severity": "warning"}}``: above the
    built-in defaults, below a project's and a run's own. Checked at start-up; see
    docs/configuration.md."""

    @field_validator("db")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if not (v.startswith("sqlite") or v.startswith("postgresql")):
            raise ValueError(f"STABMON_DB must be an sqlite:/// or postgresql+psycopg:// URL, got {v!r}")
        return v

    @field_validator("detector", mode="before")
    @classmethod
    def _detector_json(cls, v: Any) -> Any:
        # JSON text from the environment, parsed here rather than by pydantic-settings so that
        # a syntax error is reported with its position and the variable's name.
        if isinstance(v, str):
            try:
                return json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"STABMON_DETECTOR is not valid JSON: {e}") from None
        return v

    @field_validator("detector")
    @classmethod
    def _detector_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        from stabmon.detect.layers import canonical

        return canonical(v, "collector")

    @property
    def resolved_ingest_slots(self) -> int:
        return (
            self.ingest_slots
            if self.ingest_slots is not None
            else min(DEFAULT_INGEST_SLOTS, self.db_pool_size)
        )

    @property
    def is_sqlite(self) -> bool:
        return self.db.startswith("sqlite")

    @property
    def should_migrate_on_start(self) -> bool:
        return self.is_sqlite if self.migrate_on_start is None else self.migrate_on_start

    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None for PostgreSQL and in-memory databases."""
        if not self.is_sqlite:
            return None
        path = self.db.split(":///", 1)[1] if ":///" in self.db else ""
        path = path.split("?", 1)[0]
        if path in ("", ":memory:"):
            return None
        return Path(path)

    def resolved_token_file(self) -> Path | None:
        if self.token_file is not None:
            return self.token_file
        p = self.sqlite_path()
        return p.with_name(p.name + ".token") if p is not None else None


def settings_problems(error: ValidationError) -> str:
    """A :class:`Settings` validation error as one line for a command's ``error:`` message."""
    return "; ".join(
        f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
        for err in error.errors()
    )
