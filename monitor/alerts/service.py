"""The ingest service's notifier: an :class:`~monitor.alerts.AlertDispatcher` started lazily.

The app factory (:func:`monitor.api.create_app`) builds one on the store's delivery log and
outbox. The dispatcher's threads start with the first alert, so an app that never alerts runs
no extra threads, or at start-up when :meth:`LazyDispatcher.resume` finds deliveries a previous
run of the collector still owed (retries backing off when it stopped or crashed);
:meth:`LazyDispatcher.stop` ends them at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from monitor.alerts.dispatcher import AlertDispatcher, Planned

log = logging.getLogger("stabmon.alerts")


class LazyDispatcher:
    """The ingest notifier: starts the dispatcher on first use, then forwards to it."""

    def __init__(self, dispatcher: AlertDispatcher) -> None:
        self.dispatcher = dispatcher
        self._started = False

    def notify(self, run: Mapping[str, Any], alerts: Sequence[Any]) -> None:
        self._start()
        self.dispatcher.notify(run, alerts)

    @property
    def owner(self) -> str:
        """The dispatcher's name in the outbox (rows it queues and sends)."""
        return self.dispatcher.owner

    def plan(self, run: Mapping[str, Any], alerts: Sequence[Any]) -> Planned:
        """The deliveries ``alerts`` call for (see :meth:`AlertDispatcher.plan`)."""
        return self.dispatcher.plan(run, alerts)

    def schedule(self, planned: Planned) -> None:
        """Send deliveries the caller already put in the outbox."""
        self._start()
        self.dispatcher.schedule(planned)

    def resume(self) -> int:
        """Start now if the outbox holds deliveries; returns how many it holds."""
        try:
            owed = len(self.dispatcher.outbox)
        except Exception:  # the collector must start even when this cannot be read
            log.exception("could not read the webhook outbox; pending deliveries wait for the first alert")
            return 0
        if owed:
            log.info("%d webhook deliveries pending from before the restart: resuming them", owed)
            self._start()
        return owed

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self.dispatcher.start()

    def stop(self, timeout: float = 2.0) -> None:
        if self._started:
            self.dispatcher.stop(timeout=timeout)
            self._started = False
