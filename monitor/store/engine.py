"""Engine construction per backend, chosen by URL scheme.

SQLite (the embedded default) gets WAL journaling, ``synchronous=NORMAL`` (durable across
application crashes, one fsync per checkpoint instead of per commit), a busy timeout, foreign
keys, and ``BEGIN IMMEDIATE`` for write transactions: a deferred transaction that reads and
then writes can fail with SQLITE_BUSY under concurrency even with a busy timeout, an immediate
one waits for the write lock up front. PostgreSQL uses psycopg 3 with a small pool and
``pool_pre_ping`` so a restarted database is noticed instead of failing the next request.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from monitor.store.codec import dumps_json

WRITE_OPTION = "stabmon_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, pool_size: int = 8, sqlite_busy_timeout_s: float | None = None) -> Engine:
    """An Engine for ``sqlite:///...`` or ``postgresql+psycopg://...``; creates the SQLite
    file's directory if needed. ``sqlite_busy_timeout_s`` is how long a write waits for
    another writer's lock before failing (503); default :data:`SQLITE_BUSY_TIMEOUT_MS`."""
    busy_ms = SQLITE_BUSY_TIMEOUT_MS if sqlite_busy_timeout_s is None else int(sqlite_busy_timeout_s * 1000)
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            u,
            connect_args={"check_same_thread": False, "timeout": busy_ms / 1000},
            json_serializer=dumps_json,
        )
        _configure_sqlite(engine, busy_ms)
        return engine
    if u.get_backend_name() == "postgresql":
        if u.drivername == "postgresql":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(
            u,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            connect_args={"connect_timeout": 5},
            json_serializer=dumps_json,
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql+psycopg://")


def _configure_sqlite(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database(Protocol):
    """What the store's side tables (delivery log, outbox) need from :class:`Store`: its engine
    for reads and its write transaction (which takes SQLite's write lock up front)."""

    engine: Engine

    def write_transaction(self) -> AbstractContextManager[Connection]: ...
