"""The app factory: :func:`create_app` builds a complete collector from a :class:`Settings`.

It opens the store, brings the schema to head (``STABMON_MIGRATE_ON_START``; default on for
SQLite) or refuses to start when the database is behind, and assembles routers, error
handlers, the body-size limit and the app's own Prometheus registry. Tests and in-process
demos call it directly; ``stabmon serve`` hands it to uvicorn.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dashboard import mount as mount_dashboard
from monitor.alerts import AlertDispatcher
from monitor.alerts.service import LazyDispatcher
from monitor.api.admission import IngestGate
from monitor.api.errors import BodyLimitMiddleware, document_error_shapes, install_error_handlers
from monitor.api.routes import alerts, deliveries, health, points, project, runs, series
from monitor.detector_settings import DetectorSettings
from monitor.ingest import DetectorFactory, IngestService, Notifier
from monitor.metrics import AppMetrics, TimingMiddleware
from monitor.registration import RunRegistration
from monitor.settings import Settings
from monitor.store import Store, migrate
from monitor.store.migrate import SchemaNotReady

log = logging.getLogger("monitor.api")

__all__ = ["SchemaNotReady", "create_app", "prepare_database"]

API_VERSION = "v1"


def prepare_database(settings: Settings) -> None:
    """Migrate to head (``settings.should_migrate_on_start``) or check that the schema is at
    head, raising :class:`SchemaNotReady` with the command to run."""
    migrate.prepare(settings.db, apply=settings.should_migrate_on_start)


def build_notifier(store: Store, settings: Settings) -> LazyDispatcher:
    """The webhook notifier of an app: a dispatcher on the store's delivery log and outbox,
    started with the first alert (or at start-up, for deliveries still owed)."""
    targets = settings.global_targets()
    if targets:
        log.info("alert webhooks for every run: %s", ", ".join(t.display_url for t in targets))
    return LazyDispatcher(AlertDispatcher(settings, store.deliveries, outbox=store.outbox))


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    detectors: DetectorFactory | None = None,
    notifier: Notifier | None = None,
) -> FastAPI:
    """A collector app. Pass ``store`` to reuse an open (already migrated) store; otherwise one
    is opened from ``settings.db`` and the schema prepared. ``detectors`` replaces the default
    ``stabmon.detect`` detector; ``notifier.notify(run, alerts)`` receives changed alerts."""
    settings = settings or Settings()
    owns_store = store is None
    if store is None:
        prepare_database(settings)
        store = Store(
            settings.db,
            pool_size=settings.db_pool_size,
            sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s,
        )
    store.max_series_per_run = settings.max_series_per_run

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        webhooks.resume()  # webhook retries still owed from before a restart
        yield
        webhooks.stop()
        if owns_store:
            store.dispose()

    app = FastAPI(
        title="stabmon collector",
        version=API_VERSION,
        summary="Ingests per-step LLM training statistics, detects divergence, serves series and alerts.",
        lifespan=lifespan,
    )
    metrics = AppMetrics(store, settings.active_run_window_s)
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    webhooks = build_notifier(store, settings)
    app.state.alerts = webhooks
    app.state.ingest = IngestService(store, detectors, notifier or webhooks)
    app.state.detector_settings = DetectorSettings(store, settings.detector)
    app.state.registration = RunRegistration(store, app.state.detector_settings, app.state.ingest)
    app.state.ingest_gate = IngestGate(
        settings.resolved_ingest_slots, settings.ingest_queue_bytes, settings.ingest_wait_s
    )
    for module in (runs, points, series, alerts, deliveries, project, health):
        app.include_router(module.router)
    install_error_handlers(app, metrics, settings.retry_after_s)
    document_error_shapes(app)
    # Outermost first: timing sees every request, including 413s from the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(TimingMiddleware, metrics=metrics)
    mount_dashboard(app)  # the Plotly pages (/, /runs/{id}, /compare, /sweep) and /static
    return app
