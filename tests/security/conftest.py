"""The security tests reuse the collector tests' database fixtures: every case runs on SQLite
and on the real PostgreSQL (skipped locally, failed in CI, when no server answers), each
session on its own file or schema."""

from tests.monitor.conftest import (  # noqa: F401
    _stop_alert_threads,
    backend_url,
    pg_schema_url,
    session_store,
    store,
)
