"""Plugging alert delivery into a collector app: one call at build time, one at shutdown.

:func:`install_alerts` builds the :class:`~monitor.alerts.AlertDispatcher` on the app's store
(delivery log in SQL), mounts the delivery-log routes and returns the dispatcher, which the
ingest service uses as its notifier. The dispatcher's threads start with the first alert, so
an app that never alerts runs no extra threads; :func:`stop_alerts` ends them at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI

from monitor.alerts.dispatcher import AlertDispatcher
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
        if not self._started:
            self._started = True
            self.dispatcher.start()
        self.dispatcher.notify(run, alerts)

    def stop(self, timeout: float = 2.0) -> None:
        if self._started:
            self.dispatcher.stop(timeout=timeout)
            self._started = False


def install_alerts(app: FastAPI, store: Store, settings: WebhookSettings | None = None) -> LazyDispatcher:
    """Mount the delivery-log routes on ``app`` and return its webhook notifier."""
    # Imported here: the routes need monitor.api's dependencies, and monitor.api imports us.
    from monitor.alerts.routes import router

    settings = settings or WebhookSettings()
    notifier = LazyDispatcher(AlertDispatcher(settings, SqlDeliveryLog(store)))
    app.include_router(router)
    app.state.alerts = notifier
    targets = settings.global_targets()
    if targets:
        log.info("alert webhooks for every run: %s", ", ".join(t.display_url for t in targets))
    return notifier


def stop_alerts(app: FastAPI, timeout: float = 2.0) -> None:
    """Deliver what is due within ``timeout`` and stop the dispatcher's threads."""
    notifier = getattr(app.state, "alerts", None)
    if notifier is not None:
        notifier.stop(timeout)
