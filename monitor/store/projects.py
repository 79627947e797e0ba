"""Projects in the store: lookup by name, and the project's detector settings.

A project's detector settings are one JSON document of overrides (``projects.detector``; NULL
when it sets none), in the canonical nested form of :mod:`stabmon.detect.layers`. The store
keeps the document and never interprets it: callers validate before they write. Changes go
through :meth:`ProjectsMixin.update_project_detector`, a read-modify-write in one transaction,
so two concurrent edits of different keys both stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import null, select

from monitor.store import models as m
from monitor.store.errors import NotFound
from monitor.store.tokens import Project


class ProjectsMixin:
    """Methods on :class:`monitor.store.Store` for projects."""

    def find_project(self, name: str) -> Project:
        """The project called ``name``, or NotFound."""
        with self._read() as conn:
            pid = conn.execute(select(m.projects.c.id).where(m.projects.c.name == name)).scalar()
        if pid is None:
            raise NotFound(f"no project named {name!r}")
        return Project(pid, name)

    def project_detector(self, project_id: int) -> dict[str, Any]:
        """The project's detector overrides ({} when it sets none)."""
        with self._read() as conn:
            row = conn.execute(
                select(m.projects.c.detector).where(m.projects.c.id == project_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"project {project_id} not found")
        return dict(row.detector or {})

    def update_project_detector(
        self, project_id: int, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace the project's detector overrides by ``change(current)`` and return them. The
        read and the write are one transaction (the row locked on PostgreSQL; SQLite writes
        take the database's write lock up front), and an exception from ``change`` writes
        nothing."""
        with self._write() as conn:
            q = select(m.projects.c.detector).where(m.projects.c.id == project_id)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            row = conn.execute(q).one_or_none()
            if row is None:
                raise NotFound(f"project {project_id} not found")
            new = change(dict(row.detector or {}))
            # SQL NULL rather than JSON null: "sets nothing" reads the same in a plain SELECT.
            value = new if new else null()
            conn.execute(m.projects.update().where(m.projects.c.id == project_id).values(detector=value))
        return dict(new)
