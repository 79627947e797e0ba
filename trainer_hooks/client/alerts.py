"""Alerts that come back to the training job in the collector's ingest answers.

Each ``IngestResponse`` carries the run's open alerts. :class:`AlertTracker` keeps the
latest known set (what ``client.alerts`` returns, for a training loop that polls) and
decides which ones are news: an alert is handed to the ``on_alert`` callback when its
``(id, severity, status)`` has not been seen before, so an alert escalating from warning
to critical, or being resolved, is reported again, while the same open alert repeated in
every answer is reported once. The callback runs on the client's sender thread; whatever
it raises is caught and logged, because a buggy handler must not stop delivery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from stabmon.wire import AlertPublic

log = logging.getLogger("stabmon.client")

AlertCallback = Callable[[AlertPublic], Any]


class AlertTracker:
    def __init__(self, on_alert: AlertCallback | None = None) -> None:
        self.on_alert = on_alert
        self.callback_errors = 0
        self._lock = threading.Lock()
        self._open: dict[int, AlertPublic] = {}
        self._seen: set[tuple[int, str, str]] = set()
        self._bad_logged = False

    @property
    def open(self) -> list[AlertPublic]:
        """The latest known open alerts, oldest first."""
        with self._lock:
            return sorted(self._open.values(), key=lambda a: (a.step, a.id))

    def update(self, raw_alerts: Any) -> list[AlertPublic]:
        """Take the ``alerts`` list of one ingest answer; returns (and reports) the new ones."""
        if not isinstance(raw_alerts, list):
            return []
        parsed: list[AlertPublic] = []
        for raw in raw_alerts:
            try:
                parsed.append(AlertPublic.model_validate(raw))
            except ValidationError as e:
                if not self._bad_logged:
                    log.warning("stabmon client: ignoring malformed alert from collector: %s", e)
                    self._bad_logged = True
        news = []
        with self._lock:
            # The answer lists the run's open alerts: that list *is* the current state.
            self._open = {a.id: a for a in parsed if a.status == "open"}
            for a in parsed:
                key = (a.id, a.severity, a.status)
                if key not in self._seen:
                    self._seen.add(key)
                    news.append(a)
        for a in news:
            self._notify(a)
        return news

    def _notify(self, alert: AlertPublic) -> None:
        if self.on_alert is None:
            return
        try:
            self.on_alert(alert)
        except Exception:
            self.callback_errors += 1
            log.exception("stabmon client: on_alert callback raised (alert %s ignored by it)", alert.id)
