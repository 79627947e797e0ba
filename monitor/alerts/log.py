"""The delivery log: one record per attempt to deliver one alert event to one webhook.

The dispatcher writes through the small :class:`DeliveryLog` protocol, so it does not care
whether attempts land in SQL (:class:`monitor.store.deliveries.SqlDeliveryLog`, the collector's
table ``alert_deliveries``) or in memory (:class:`MemoryDeliveryLog`, for tests and for a
dispatcher without a database). The log is also the dispatcher's memory across restarts: an
event already delivered to a target is not sent again.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

Outcome = Literal["delivered", "retrying", "failed"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class DeliveryAttempt:
    alert_id: int
    run_id: str
    event: str
    """``opened`` | ``escalated`` | ``resolved``."""
    target_id: str
    """Fingerprint of the full URL (:attr:`WebhookTarget.target_id`)."""
    url: str
    """The redacted URL: no credentials, query or path secrets."""
    format: str
    attempt: int
    """1 for the first try."""
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    created_at: datetime = field(default_factory=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeliveryLog(Protocol):
    def record(self, attempt: DeliveryAttempt) -> None:
        """Append one attempt. Called from sender threads; must be thread-safe."""

    def delivered(self, alert_id: int, event: str, target_id: str) -> bool:
        """Whether this event of this alert already reached this target."""

    def for_alert(self, alert_id: int) -> list[DeliveryAttempt]:
        """All attempts for one alert, oldest first."""


class MemoryDeliveryLog:
    """A :class:`DeliveryLog` in a list: for tests and a collector without persistence."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attempts: list[DeliveryAttempt] = []

    def record(self, attempt: DeliveryAttempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def delivered(self, alert_id: int, event: str, target_id: str) -> bool:
        with self._lock:
            return any(
                a.alert_id == alert_id
                and a.event == event
                and a.target_id == target_id
                and a.outcome == "delivered"
                for a in self.attempts
            )

    def for_alert(self, alert_id: int) -> list[DeliveryAttempt]:
        with self._lock:
            return [a for a in self.attempts if a.alert_id == alert_id]
