"""The webhook outbox: deliveries the dispatcher still owes, kept until they end.

A delivery (one alert event for one webhook target) enters the outbox when the dispatcher
schedules it and leaves when it ends (delivered, or failed for good); a retry rewrites its
next attempt number and due time. What is in the outbox when the collector stops (retries
backing off, deliveries not yet tried, an attempt cut short) is therefore still there when it
starts again, and the new dispatcher resumes each delivery where it stopped: same attempt
count, same due time, same payload. :class:`~monitor.store.outbox.SqlOutbox` keeps it in
the collector's database (table ``alert_outbox``); :class:`MemoryOutbox` in memory (tests, or a
dispatcher without a database, where nothing survives a restart).

Ownership: each dispatcher has an ``owner`` id. A starting collector :meth:`~Outbox.claim`\\ s
every pending delivery, and a dispatcher sends only what it still :meth:`~Outbox.owns`, so with
several collector replicas on one database a delivery is taken over by the replica that
restarted and is not also sent by the one that scheduled it.

The outbox never holds a webhook URL (URLs carry secrets): a delivery names its target by
``target_id``, and the dispatcher finds the URL again in its settings or the run's
``config.webhooks`` (:attr:`PendingDelivery.run_config`).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from monitor.alerts.log import DeliveryAttempt

Key = tuple[int, str, str]
"""``(alert_id, event, target_id)``: one delivery."""


@dataclass(frozen=True)
class PendingDelivery:
    alert_id: int
    run_id: str
    """The run's id as the API speaks it (what delivery-log records carry)."""
    event: str
    target_id: str
    attempt: int
    """The number of the next attempt (1: never tried)."""
    due_at: datetime
    """When the next attempt is due (UTC, wall clock: it must mean the same after a restart)."""
    payload: dict[str, Any]
    run_config: dict[str, Any] = field(default_factory=dict)
    """The run's config, where its own webhooks are (what :meth:`Outbox.claim` returns; the SQL
    outbox reads it from the run's row rather than storing it twice)."""

    @property
    def key(self) -> Key:
        return (self.alert_id, self.event, self.target_id)


def reconcile(
    p: PendingDelivery, tried: Sequence[DeliveryAttempt], backoff: Callable[[int], float]
) -> PendingDelivery | None:
    """``p`` as the delivery log says it stands, given its logged attempts (oldest first).

    The outbox is updated just after an attempt is logged, so a crash in between leaves the
    row one attempt behind: then the delivery has ended (None: it was delivered, or failed for
    good), or its next attempt is the one after the last logged, due ``backoff(n)`` seconds
    after attempt ``n``. Otherwise ``p`` stands as stored.
    """
    if not tried:
        return p
    last = tried[-1]
    if any(a.outcome == "delivered" for a in tried) or last.outcome == "failed":
        return None
    if last.attempt < p.attempt:
        return p
    due = max(p.due_at, last.created_at + timedelta(seconds=backoff(last.attempt)))
    return replace(p, attempt=last.attempt + 1, due_at=due)


class Outbox(Protocol):
    durable: bool
    """Whether what is pending survives the process (the dispatcher keeps retrying at shutdown
    only into a durable outbox)."""

    def put(self, delivery: PendingDelivery, owner: str) -> None:
        """Insert or replace the delivery (its next attempt and due time), owned by ``owner``."""

    def remove(self, key: Key) -> None:
        """The delivery ended (delivered or failed for good)."""

    def claim(self, owner: str) -> list[PendingDelivery]:
        """Make ``owner`` the owner of every pending delivery and return them, soonest due
        first, each with its run's config."""

    def owns(self, key: Key, owner: str) -> bool:
        """Whether the delivery is still pending and ``owner``'s (no other dispatcher took it)."""

    def __len__(self) -> int:
        """How many deliveries are pending."""


class MemoryOutbox:
    """An :class:`Outbox` in a dict: shared by dispatchers of one process, lost with it."""

    durable = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[Key, tuple[PendingDelivery, str]] = {}

    def put(self, delivery: PendingDelivery, owner: str) -> None:
        with self._lock:
            self._rows[delivery.key] = (copy.deepcopy(delivery), owner)

    def remove(self, key: Key) -> None:
        with self._lock:
            self._rows.pop(key, None)

    def claim(self, owner: str) -> list[PendingDelivery]:
        with self._lock:
            self._rows = {k: (d, owner) for k, (d, _) in self._rows.items()}
            return sorted((d for d, _ in self._rows.values()), key=lambda d: d.due_at)

    def owns(self, key: Key, owner: str) -> bool:
        with self._lock:
            row = self._rows.get(key)
            return row is not None and row[1] == owner

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
