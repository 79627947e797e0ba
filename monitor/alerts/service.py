"""Plugging alert delivery into a collector app: one call at build time, one at shutdown.

:func:`install_alerts` builds the :class:`~monitor.alerts.AlertDispatcher` on the app's store
(delivery log and outbox in SQL), mounts the delivery-log routes and returns the dispatcher,
which the ingest service uses as its notifier. The dispatcher's threads start with the first
alert, so an app that never alerts runs no extra threads, or at start-up when
:func:`resume_alerts` finds deliveries a previous run of the collector still owed (retries
backing off when it stopped or crashed); :func:`stop_alerts` ends them at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.alerts.outbox_sql import SqlOutbox
from monitor.alerts.settings import WebhookSettings
from monitor.alerts.sql import SqlDeliveryLog
from monitor.store import Store

log = logging.getLogger("stabmon.alerts")


class LazyDispatcher:
    """The ingest notifier: starts the dispatcher on first use, then forwards to it."""

    def __init__(self, dispatcher: AlertDispatcher) -> None:
        self.dispatcher = dispatcher
        self._started = False

    def notify(self, run: Mapping[str, Any], alerts: Sequence[Any]) -> None:
        self._start()
        self.dispatcher.notify(run, alerts)

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


def install_alerts(app: FastAPI, store: Store, settings: WebhookSettings | None = None) -> LazyDispatcher:
    """Mount the delivery-log routes on ``app`` and return its webhook notifier."""
    # Imported here: the routes need monitor.api's dependencies, and monitor.api imports us.
    from monitor.alerts.routes import router

    settings = settings or WebhookSettings()
    notifier = LazyDispatcher(AlertDispatcher(settings, SqlDeliveryLog(store), outbox=SqlOutbox(store)))
    app.include_router(router)
    app.state.alerts = notifier
    targets = settings.global_targets()
    if targets:
        log.info("alert webhooks for every run: %s", ", ".join(t.display_url for t in targets))
    return notifier


def resume_alerts(app: FastAPI) -> None:
    """At start-up: resume the webhook deliveries the outbox holds (see :class:`LazyDispatcher`)."""
    notifier = getattr(app.state, "alerts", None)
    if notifier is not None:
        notifier.resume()


def stop_alerts(app: FastAPI, timeout: float = 2.0) -> None:
    """Deliver what is due within ``timeout`` and stop the dispatcher's threads."""
    notifier = getattr(app.state, "alerts", None)
    if notifier is not None:
        notifier.stop(timeout)
