"""The webhook outbox in SQL: :class:`SqlOutbox`, over the ``alert_outbox`` table of
:mod:`monitor.store.models`.

One row per delivery the dispatcher still owes (see :mod:`monitor.alerts.outbox`). A row goes
when its delivery ends, or with its alert (``ON DELETE CASCADE``, and an alert goes with its
run). Sender and planner threads write here, never the ingest path: one write when a delivery
is scheduled, one per retry, one at the end.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, delete, func, select, update

from monitor.alerts.outbox import Key, PendingDelivery
from monitor.store import models as m
from monitor.store.codec import aware, utcnow
from monitor.store.engine import Database

alert_outbox = m.alert_outbox


def _match(key: Key):  # noqa: ANN202
    o = alert_outbox.c
    alert_id, event, target_id = key
    return and_(o.alert_id == alert_id, o.event == event, o.target_id == target_id)


def put(conn: Connection, delivery: PendingDelivery, owner: str) -> None:
    """Record ``delivery`` in ``conn``'s transaction, replacing the row of the same key. Delete
    and insert: a portable upsert, and rare (once per scheduled delivery and attempt)."""
    conn.execute(delete(alert_outbox).where(_match(delivery.key)))
    conn.execute(
        alert_outbox.insert().values(
            alert_id=delivery.alert_id,
            event=delivery.event,
            target_id=delivery.target_id,
            owner=owner,
            attempt=delivery.attempt,
            due_at=delivery.due_at,
            payload=delivery.payload,
            created_at=utcnow(),
        )
    )


class SqlOutbox:
    """:class:`~monitor.alerts.outbox.Outbox` on the collector's database."""

    durable = True

    def __init__(self, store: Database) -> None:
        self.store = store

    def put(self, delivery: PendingDelivery, owner: str) -> None:
        with self.store.write_transaction() as conn:
            put(conn, delivery, owner)

    def remove(self, key: Key) -> None:
        with self.store.write_transaction() as conn:
            conn.execute(delete(alert_outbox).where(_match(key)))

    def claim(self, owner: str) -> list[PendingDelivery]:
        o = alert_outbox.c
        q = (
            select(alert_outbox, m.runs.c.external_id, m.runs.c.config)
            .join(m.alerts, m.alerts.c.id == o.alert_id)
            .join(m.runs, m.runs.c.id == m.alerts.c.run_id)
            .order_by(o.due_at, o.alert_id)
        )
        with self.store.write_transaction() as conn:
            conn.execute(update(alert_outbox).values(owner=owner))
            rows = conn.execute(q).all()
        return [
            PendingDelivery(
                alert_id=r.alert_id,
                run_id=r.external_id,
                event=r.event,
                target_id=r.target_id,
                attempt=r.attempt,
                due_at=aware(r.due_at),
                payload=r.payload,
                run_config=r.config or {},
            )
            for r in rows
        ]

    def owns(self, key: Key, owner: str) -> bool:
        with self.store.engine.connect() as conn:
            found = conn.execute(select(alert_outbox.c.owner).where(_match(key))).scalar()
        return found == owner

    def __len__(self) -> int:
        with self.store.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(alert_outbox)).scalar_one()
