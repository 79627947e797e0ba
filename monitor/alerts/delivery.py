"""What the webhook dispatcher moves around: one owed :class:`Delivery` (an alert event for one
target, with its next attempt and due time) and the :class:`Planned` deliveries of one
notification, plus the names of the dispatcher's counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.alerts.log import utcnow
from monitor.alerts.outbox import Key, PendingDelivery
from monitor.alerts.payload import Event
from monitor.alerts.targets import WebhookTarget

STAT_NAMES = (
    "notified",
    "events",
    "dropped",
    "skipped_delivered",
    "attempts",
    "delivered",
    "retried",
    "failed",
    "abandoned",
    "resumed",
    "skipped_pending",
    "taken_over",
    "orphaned",
    "outbox_errors",
)
"""Counters in :attr:`AlertDispatcher.stats <monitor.alerts.dispatcher.AlertDispatcher.stats>`."""


@dataclass(order=True)
class Delivery:
    due: float
    seq: int
    target: WebhookTarget = field(compare=False)
    event: Event = field(compare=False)
    alert_id: int = field(compare=False)
    run_id: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    attempt: int = field(default=1, compare=False)
    run_config: dict[str, Any] = field(default_factory=dict, compare=False)
    persisted: bool = field(default=True, compare=False)
    """Whether the outbox holds its current attempt (False after an outbox failure)."""

    @property
    def key(self) -> Key:
        return (self.alert_id, self.event, self.target.target_id)

    def pending(self, due_at: datetime) -> PendingDelivery:
        """This delivery as the outbox stores it."""
        return PendingDelivery(
            alert_id=self.alert_id,
            run_id=self.run_id,
            event=self.event,
            target_id=self.target.target_id,
            attempt=self.attempt,
            due_at=due_at,
            payload=self.payload,
            run_config=self.run_config,
        )


@dataclass
class Planned:
    """What :meth:`AlertDispatcher.plan` decided for one notification."""

    deliveries: list[Delivery] = field(default_factory=list)
    seen: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Alert id -> (severity, status) notified, applied when scheduled."""

    def pending(self) -> list[PendingDelivery]:
        now = utcnow()
        return [d.pending(now) for d in self.deliveries]
