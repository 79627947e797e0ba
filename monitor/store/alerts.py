"""Alerts and per-run detector state in the store.

Alert lifecycle, one OPEN alert per (run, rule) (a partial unique index backs it): a rule's
first finding opens an alert at that step; while the rule keeps firing the alert's
``last_step``, message and evidence follow the newest finding and its severity can only go
up (warning -> critical); the first observed step without a finding for the rule resolves it.
:func:`apply_findings` replays a batch's steps through that machine in memory and writes the
net changes, inside the ingest transaction.

The functions here run inside a caller's transaction on a resolved run (:class:`RunRef`, or its
internal key for the detector state): the rows reference the internal key, while every
:class:`AlertPublic` carries the run's external id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, select

from monitor.store import models as m
from monitor.store.codec import aware, from_db, json_safe, utcnow
from monitor.store.runs import RunRef, dialect_insert
from stabmon.wire import AlertPublic

_SEVERITY_RANK = {"warning": 0, "critical": 1}


class FindingLike(Protocol):
    rule: str
    severity: str
    step: int
    message: str
    evidence: dict[str, Any]


@dataclass
class _Alert:
    id: int | None
    rule: str
    severity: str
    status: str
    step: int
    last_step: int
    message: str
    evidence: dict[str, Any]
    created_at: Any
    dirty: bool = False


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


def apply_findings(
    conn: Connection, run: RunRef, steps: Sequence[tuple[int, Sequence[FindingLike]]]
) -> list[AlertPublic]:
    """Advance the run's alerts through ``steps`` (each: a step and the findings that fired
    at it, in step order), write the resulting inserts/updates and return the alerts that
    changed (opened, updated, escalated or resolved), as stored."""
    if not steps:
        return []
    now = utcnow()
    current: dict[str, _Alert] = {
        r.rule: _Alert(
            r.id, r.rule, r.severity, "open", r.step, r.last_step, r.message, r.evidence, r.created_at
        )
        for r in conn.execute(
            select(m.alerts).where(m.alerts.c.run_id == run.pk, m.alerts.c.status == "open")
        ).all()
    }
    finished: list[_Alert] = []  # opened and resolved within this batch, or resolved now
    for _step, findings in steps:
        firing = {f.rule: f for f in findings}
        for rule, f in firing.items():
            a = current.get(rule)
            if a is None:
                current[rule] = _Alert(
                    None, rule, f.severity, "open", f.step, f.step, f.message, dict(f.evidence), now, True
                )
                continue
            a.last_step, a.message, a.evidence, a.dirty = f.step, f.message, dict(f.evidence), True
            if _SEVERITY_RANK.get(f.severity, 0) > _SEVERITY_RANK.get(a.severity, 0):
                a.severity = f.severity
        for rule in [r for r in current if r not in firing]:
            a = current.pop(rule)
            a.status, a.dirty = "resolved", True
            finished.append(a)
    # Resolutions first, so a rule resolved and re-opened in one batch never has two open rows.
    changed: list[int] = []
    for a in finished + list(current.values()):
        if not a.dirty:
            continue
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
        changed.append(a.id)
    if not changed:
        return []
    rows = conn.execute(select(m.alerts).where(m.alerts.c.id.in_(changed)).order_by(m.alerts.c.id)).all()
    return [_public(r, run.external_id) for r in rows]


def load_state(conn: Connection, run_key: str) -> tuple[dict[str, Any] | None, int | None]:
    """The stored detector state dict and the last step fed to it, or (None, None)."""
    row = conn.execute(
        select(m.run_state.c.detector_state, m.run_state.c.last_step).where(m.run_state.c.run_id == run_key)
    ).one_or_none()
    if row is None:
        return None, None
    return json.loads(row.detector_state), row.last_step


def state_stamp(conn: Connection, run_key: str) -> tuple[int | None, datetime] | None:
    """(last_step, updated_at) of the run's stored detector state, without reading the state
    itself: the ingest service compares it with the stamp it wrote to know whether the state
    it holds in memory is still the stored one."""
    row = conn.execute(
        select(m.run_state.c.last_step, m.run_state.c.updated_at).where(m.run_state.c.run_id == run_key)
    ).one_or_none()
    return None if row is None else (row.last_step, aware(row.updated_at))


def save_state(
    conn: Connection, run_key: str, state: dict[str, Any] | str, last_step: int | None
) -> tuple[int | None, datetime]:
    """Store the detector state (a dict, or its JSON text); returns the stamp written (see
    :func:`state_stamp`)."""
    # NaN/inf allowed in a dict: Python's json reads them back as floats.
    blob = state if isinstance(state, str) else json.dumps(state)
    now = utcnow()
    stmt = dialect_insert(conn, m.run_state).values(
        run_id=run_key, detector_state=blob, last_step=last_step, updated_at=now
    )
    # excluded.*: the state (165 KB for 243 series) travels once, not once per clause.
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["run_id"],
            set_={c: stmt.excluded[c] for c in ("detector_state", "last_step", "updated_at")},
        )
    )
    return last_step, now


def stored_steps(
    conn: Connection, run_key: str, rank: int, before: int
) -> Iterator[tuple[int, dict[str, float]]]:
    """The run's stored values at ``rank`` for steps < ``before``, grouped by step in step
    order: what the detector replays when a run's state snapshot is missing."""
    rows = conn.execute(
        select(m.points.c.step, m.series.c.key, m.points.c.value)
        .join(m.series, m.series.c.id == m.points.c.series_id)
        .where(m.series.c.run_id == run_key, m.points.c.rank == rank, m.points.c.step < before)
        .order_by(m.points.c.step)
    ).tuples()
    cur_step, cur = None, {}
    for step, key, value in rows:
        if step != cur_step:
            if cur_step is not None:
                yield cur_step, cur
            cur_step, cur = step, {}
        cur[key] = from_db(value)
    if cur_step is not None:
        yield cur_step, cur


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
