"""Writing rows in an older revision's schema, for the migration tests: the tables are reflected
from the database as it stands, so the rows match that revision, not today's models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, MetaData, Table

from monitor.store.engine import make_engine


@contextmanager
def reflected(url: str) -> Iterator[tuple[Connection, dict[str, Table]]]:
    """A transaction on ``url`` and its tables as they are now."""
    eng = make_engine(url, pool_size=1)
    try:
        meta = MetaData()
        meta.reflect(eng)
        with eng.begin() as conn:
            yield conn, dict(meta.tables)
    finally:
        eng.dispose()
