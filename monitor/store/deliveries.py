"""The webhook delivery log in SQL: :class:`SqlDeliveryLog`, over the ``alert_deliveries`` table
of :mod:`monitor.store.models`.

One row per attempt to deliver one alert event to one webhook; rows go when their alert or run
is deleted (``ON DELETE CASCADE``). Sender threads write here, never the ingest path. Rows
reference the run's internal key, taken from the alert's row; attempts read back carry the
run's external id, like the rest of the API.
"""

from __future__ import annotations

from sqlalchemy import select

from monitor.alerts.log import DeliveryAttempt
from monitor.store import models as m
from monitor.store.codec import aware
from monitor.store.engine import Database
from monitor.store.errors import NotFound

alert_deliveries = m.alert_deliveries


def _attempt(row) -> DeliveryAttempt:  # noqa: ANN001
    return DeliveryAttempt(
        alert_id=row.alert_id,
        run_id=row.external_id,
        event=row.event,
        target_id=row.target_id,
        url=row.url,
        format=row.format,
        attempt=row.attempt,
        outcome=row.outcome,
        status_code=row.status_code,
        error=row.error,
        duration_ms=row.duration_ms,
        created_at=aware(row.created_at),
    )


class SqlDeliveryLog:
    """:class:`~monitor.alerts.log.DeliveryLog` on the collector's database."""

    def __init__(self, store: Database) -> None:
        self.store = store

    def record(self, attempt: DeliveryAttempt) -> None:
        row = attempt.to_dict()
        row["url"] = row["url"][:500]
        # The attempt names the run by its external id, which is unique only within a project;
        # the alert knows the run's internal key.
        row["run_id"] = select(m.alerts.c.run_id).where(m.alerts.c.id == attempt.alert_id).scalar_subquery()
        with self.store.write_transaction() as conn:
            conn.execute(alert_deliveries.insert().values(**row))

    @staticmethod
    def _select():  # noqa: ANN205
        return select(alert_deliveries, m.runs.c.external_id).join(
            m.runs, m.runs.c.id == alert_deliveries.c.run_id
        )

    def delivered(self, alert_id: int, event: str, target_id: str) -> bool:
        d = alert_deliveries.c
        with self.store.engine.connect() as conn:
            hit = conn.execute(
                select(d.id)
                .where(d.alert_id == alert_id, d.event == event, d.target_id == target_id)
                .where(d.outcome == "delivered")
                .limit(1)
            ).first()
        return hit is not None

    def for_alert(self, alert_id: int) -> list[DeliveryAttempt]:
        d = alert_deliveries.c
        with self.store.engine.connect() as conn:
            rows = conn.execute(self._select().where(d.alert_id == alert_id).order_by(d.id)).all()
        return [_attempt(r) for r in rows]

    def list(self, project_id: int, run_id: str, alert_id: int | None = None) -> list[DeliveryAttempt]:
        """Attempts of one run (optionally one alert), oldest first. NotFound (404) when the run
        is not in the project or the alert not in the run, exactly like a missing one."""
        d = alert_deliveries.c
        with self.store.engine.connect() as conn:
            pk = conn.execute(
                select(m.runs.c.id).where(m.runs.c.project_id == project_id, m.runs.c.external_id == run_id)
            ).scalar()
            if pk is None:
                raise NotFound(f"run {run_id!r} not found")
            q = self._select().where(d.run_id == pk)
            if alert_id is not None:
                found = conn.execute(
                    select(m.alerts.c.id).where(m.alerts.c.id == alert_id, m.alerts.c.run_id == pk)
                ).first()
                if found is None:
                    raise NotFound(f"alert {alert_id} not found in run {run_id!r}")
                q = q.where(d.alert_id == alert_id)
            rows = conn.execute(q.order_by(d.id)).all()
        return [_attempt(r) for r in rows]
