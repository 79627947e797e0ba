"""Alerts in the store: the rows the alert lifecycle (:mod:`monitor.alerts.lifecycle`, pure)
decides, and the read-side methods.

The functions here run inside a caller's transaction on a resolved run (:class:`RunRef`): the
rows reference the run's internal key, while every :class:`AlertPublic` carries its external id.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select

from monitor.alerts.lifecycle import AlertRecord
from monitor.store import models as m
from monitor.store.codec import aware, json_safe, utcnow
from monitor.store.runs import RunRef
from stabmon.wire import AlertPublic


def _public(row, run_id: str) -> AlertPublic:  # noqa: ANN001
    return AlertPublic(
        id=row.id,
        run_id=run_id,
        rule=row.rule,
        severity=row.severity,
        status=row.status,
        step=row.step,
        last_step=row.last_step,
        message=row.message,
        evidence=row.evidence or {},
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


def open_alerts(conn: Connection, run: RunRef) -> list[AlertPublic]:
    rows = conn.execute(
        select(m.alerts)
        .where(m.alerts.c.run_id == run.pk, m.alerts.c.status == "open")
        .order_by(m.alerts.c.id)
    ).all()
    return [_public(r, run.external_id) for r in rows]


def open_records(conn: Connection, run: RunRef) -> list[AlertRecord]:
    """The run's open alerts as the lifecycle (:mod:`monitor.alerts.lifecycle`) takes them."""
    rows = conn.execute(
        select(m.alerts).where(m.alerts.c.run_id == run.pk, m.alerts.c.status == "open")
    ).all()
    return [
        AlertRecord(
            r.id, r.rule, r.severity, r.status, r.step, r.last_step, r.message, r.evidence, r.created_at
        )
        for r in rows
    ]


def save_alerts(conn: Connection, run: RunRef, changed: Sequence[AlertRecord]) -> list[AlertPublic]:
    """Write the alerts :func:`~monitor.alerts.lifecycle.advance` changed, in its order
    (resolutions first), and return them as stored."""
    now = utcnow()
    ids: list[int] = []
    for a in changed:
        values = {
            "severity": a.severity,
            "status": a.status,
            "last_step": a.last_step,
            "message": a.message[:4000],
            "evidence": json_safe(a.evidence),
            "updated_at": now,
        }
        if a.id is None:
            a.id = conn.execute(
                m.alerts.insert()
                .values(run_id=run.pk, rule=a.rule, step=a.step, created_at=a.created_at, **values)
                .returning(m.alerts.c.id)
            ).scalar_one()
        else:
            conn.execute(m.alerts.update().where(m.alerts.c.id == a.id).values(**values))
        ids.append(a.id)
    if not ids:
        return []
    rows = conn.execute(select(m.alerts).where(m.alerts.c.id.in_(ids)).order_by(m.alerts.c.id)).all()
    return [_public(r, run.external_id) for r in rows]


class AlertsMixin:
    """Read-side alert methods on :class:`monitor.store.Store`."""

    def list_alerts(self, project_id: int, run_id: str, status: str | None = None) -> list[AlertPublic]:
        with self._read() as conn:
            run = self._check_run(conn, project_id, run_id)
            q = select(m.alerts).where(m.alerts.c.run_id == run.pk)
            if status is not None:
                q = q.where(m.alerts.c.status == status)
            rows = conn.execute(q.order_by(m.alerts.c.id)).all()
        return [_public(r, run.external_id) for r in rows]

    def open_alerts(self, project_id: int, run_id: str) -> list[AlertPublic]:
        with self._read() as conn:
            return open_alerts(conn, self._check_run(conn, project_id, run_id))
