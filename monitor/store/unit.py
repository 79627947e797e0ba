"""The ingest unit of work: one write transaction on one run, holding the run's row lock.

:meth:`UnitMixin.ingest_unit` opens it; the ingest service (:mod:`monitor.ingest`) then owns
the sequence inside it: write the batch's points, load and save the detector state, read the
open alerts and write the ones the lifecycle (:mod:`monitor.alerts.lifecycle`) changed, queue
the webhook deliveries they call for in the outbox. All of it commits together or not at all,
so a 2xx means points, detector state, alerts and owed deliveries are stored together. The
SQLAlchemy connection never leaves this package: the unit's methods are the whole interface.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from monitor.alerts.lifecycle import AlertRecord
from monitor.alerts.outbox import PendingDelivery
from monitor.store import alerts as alert_rows
from monitor.store import outbox, run_state
from monitor.store.points import PointLike, PointsMixin, WriteResult
from monitor.store.runs import RunRef
from stabmon.wire import AlertPublic

Stamp = tuple[int | None, datetime]
"""(last step, written at) of a run's stored detector state."""


class IngestUnit:
    """One ingest's transaction on ``run`` (locked for its duration)."""

    def __init__(self, store: PointsMixin, conn: Connection, run: RunRef) -> None:
        self._store, self._conn, self.run = store, conn, run

    @property
    def run_key(self) -> str:
        """The run's internal key (what rows reference); :attr:`run` ``.external_id`` is its id."""
        return self.run.pk

    def write_points(self, batch_id: str, points: Sequence[PointLike]) -> WriteResult:
        return self._store._write_batch(self._conn, self.run, batch_id, points)

    # -- detector state --------------------------------------------------------------------
    def state_stamp(self) -> Stamp | None:
        return run_state.state_stamp(self._conn, self.run.pk)

    def load_state(self) -> dict[str, Any] | None:
        return run_state.load_state(self._conn, self.run.pk)[0]

    def save_state(self, snapshot: dict[str, Any] | str, last_step: int | None) -> Stamp:
        return run_state.save_state(self._conn, self.run.pk, snapshot, last_step)

    def stored_steps(self, rank: int, before: int) -> Iterator[tuple[int, dict[str, float]]]:
        return run_state.stored_steps(self._conn, self.run.pk, rank, before)

    # -- alerts ----------------------------------------------------------------------------
    def open_alert_records(self) -> list[AlertRecord]:
        return alert_rows.open_records(self._conn, self.run)

    def save_alerts(self, changed: Sequence[AlertRecord]) -> list[AlertPublic]:
        return alert_rows.save_alerts(self._conn, self.run, changed)

    def open_alerts(self) -> list[AlertPublic]:
        return alert_rows.open_alerts(self._conn, self.run)

    def queue_deliveries(self, deliveries: Sequence[PendingDelivery], owner: str) -> None:
        """Put webhook deliveries in the outbox, committed with the alerts they announce: a
        collector that dies right after the commit still owes them at its next start."""
        for d in deliveries:
            outbox.put(self._conn, d, owner)


class UnitMixin:
    """:meth:`ingest_unit` on :class:`monitor.store.Store`."""

    @contextmanager
    def ingest_unit(self, project_id: int, run_id: str) -> Iterator[IngestUnit]:
        """A write transaction on the project's run ``run_id`` (NotFound when it is not there),
        committed when the block ends and rolled back when it raises."""
        with self._write() as conn:
            yield IngestUnit(self, conn, self._check_run(conn, project_id, run_id, lock=True))
