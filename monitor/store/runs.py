"""Runs and projects in the store: create (idempotent by client-chosen id), get, list with
filters and pagination, update status/summary.

Run ids are per project: every method takes the token's project and the run's external id (the
one in URLs), and two projects may each have a run with the same id, fully apart. The child
tables reference the run's internal key (``runs.id``, see :mod:`monitor.store.models`), which
:meth:`RunsMixin._check_run` resolves; it never leaves the store. A lookup of another project's
run raises :class:`NotFound`, exactly like a missing one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, null, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.store import models as m
from monitor.store.codec import aware, utcnow
from monitor.store.errors import NotFound
from stabmon.wire import RunCreate, RunPublic, RunUpdate

MAX_PAGE = 500


def dialect_insert(conn: Connection, table):  # noqa: ANN001, ANN201
    """``INSERT`` with ``on_conflict_do_*`` for the connection's dialect."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True)
class RunRef:
    """A resolved run: its internal key (what child rows reference) and its external id."""

    pk: str
    external_id: str


def _variant(config: dict[str, Any]) -> str | None:
    v = config.get("variant")
    return str(v)[:200] if v is not None else None


class RunsMixin:
    """Methods on :class:`monitor.store.Store` for projects and runs."""

    # -- projects ---------------------------------------------------------------------
    def ensure_project(self, name: str) -> int:
        with self._write() as conn:
            return self._ensure_project(conn, name)

    def _ensure_project(self, conn: Connection, name: str) -> int:
        conn.execute(
            dialect_insert(conn, m.projects)
            .values(name=name, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        return conn.execute(select(m.projects.c.id).where(m.projects.c.name == name)).scalar_one()

    # -- runs ---------------------------------------------------------------------------
    def _run_select(self):  # noqa: ANN202
        open_alerts = (
            select(func.count())
            .select_from(m.alerts)
            .where(and_(m.alerts.c.run_id == m.runs.c.id, m.alerts.c.status == "open"))
            .scalar_subquery()
        )
        return select(m.runs, m.projects.c.name.label("project"), open_alerts.label("open_alerts")).join(
            m.projects, m.projects.c.id == m.runs.c.project_id
        )

    @staticmethod
    def _run_public(row) -> RunPublic:  # noqa: ANN001
        return RunPublic(
            id=row.external_id,
            name=row.name,
            project=row.project,
            status=row.status,
            config=row.config or {},
            summary=row.summary or {},
            created_at=aware(row.created_at),
            updated_at=aware(row.updated_at),
            last_step=row.last_step,
            open_alerts=row.open_alerts or 0,
        )

    def create_run(
        self, project_id: int, body: RunCreate, detector_layers: dict[str, Any] | None = None
    ) -> tuple[RunPublic, bool]:
        """Register a run; returns (run, created). Same id in the same project: the existing
        run, created=False (a retried registration), its stored detector layers kept. Other
        projects' ids play no part. ``detector_layers`` are the detector overrides beneath the
        run's own, saved with it (see ``runs.detector_layers``)."""
        run_id = body.id or uuid.uuid4().hex
        now = utcnow()
        with self._write() as conn:
            res = conn.execute(
                dialect_insert(conn, m.runs)
                .values(
                    id=uuid.uuid4().hex,
                    project_id=project_id,
                    external_id=run_id,
                    name=body.name,
                    status="running",
                    variant=_variant(body.config),
                    config=body.config,
                    detector_layers=detector_layers if detector_layers is not None else null(),
                    summary={},
                    last_step=None,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["project_id", "external_id"])
                .returning(m.runs.c.id)
            )
            created = res.first() is not None
            row = conn.execute(self._run_select().where(*_owned(project_id, run_id))).one()
            return self._run_public(row), created

    def get_run(self, project_id: int, run_id: str) -> RunPublic:
        with self._read() as conn:
            row = conn.execute(self._run_select().where(*_owned(project_id, run_id))).one_or_none()
        if row is None:
            raise NotFound(f"run {run_id!r} not found")
        return self._run_public(row)

    def run_config(self, project_id: int, run_id: str) -> dict[str, Any]:
        return self.get_run(project_id, run_id).config

    def run_detector_layers(self, project_id: int, run_id: str) -> dict[str, Any] | None:
        """The detector overrides saved beneath the run's own when it was registered, or None
        for a run registered without them (before migration 0008)."""
        with self._read() as conn:
            q = select(m.runs.c.detector_layers).where(*_owned(project_id, run_id))
            row = conn.execute(q).one_or_none()
        if row is None:
            raise NotFound(f"run {run_id!r} not found")
        return row.detector_layers

    def list_runs(
        self,
        project_id: int,
        *,
        status: str | None = None,
        variant: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[RunPublic], int]:
        """A page of the project's runs, newest first, and the total matching count."""
        limit = max(1, min(limit, MAX_PAGE))
        cond = [m.runs.c.project_id == project_id]
        if status is not None:
            cond.append(m.runs.c.status == status)
        if variant is not None:
            cond.append(m.runs.c.variant == variant)
        with self._read() as conn:
            total = conn.execute(select(func.count()).select_from(m.runs).where(*cond)).scalar_one()
            rows = conn.execute(
                self._run_select()
                .where(*cond)
                .order_by(m.runs.c.created_at.desc(), m.runs.c.external_id)
                .limit(limit)
                .offset(offset)
            ).all()
        return [self._run_public(r) for r in rows], total

    def update_run(self, project_id: int, run_id: str, body: RunUpdate) -> RunPublic:
        """Set the status and/or merge ``summary`` into the stored one (shallow: given keys
        replace stored keys, others stay)."""
        with self._write() as conn:
            row = conn.execute(
                select(m.runs.c.id, m.runs.c.summary).where(*_owned(project_id, run_id))
            ).one_or_none()
            if row is None:
                raise NotFound(f"run {run_id!r} not found")
            values: dict[str, Any] = {"updated_at": utcnow()}
            if body.status is not None:
                values["status"] = body.status
            if body.summary is not None:
                values["summary"] = {**(row.summary or {}), **body.summary}
            conn.execute(m.runs.update().where(m.runs.c.id == row.id).values(**values))
            new = conn.execute(self._run_select().where(m.runs.c.id == row.id)).one()
        return self._run_public(new)

    def _check_run(self, conn: Connection, project_id: int, run_id: str, lock: bool = False) -> RunRef:
        """The project's run ``run_id`` (its external id), or NotFound."""
        q = select(m.runs.c.id).where(*_owned(project_id, run_id))
        if lock and conn.dialect.name == "postgresql":
            q = q.with_for_update()  # serialises concurrent batches of one run (detector state)
        pk = conn.execute(q).scalar()
        if pk is None:
            raise NotFound(f"run {run_id!r} not found")
        return RunRef(pk, run_id)


def _owned(project_id: int, run_id: str) -> tuple:
    """The WHERE clause for the project's run with external id ``run_id`` (the unique index)."""
    return (m.runs.c.project_id == project_id, m.runs.c.external_id == run_id)
