"""Prometheus metrics of one collector app, in a :class:`CollectorRegistry` the app owns
(never the process-global default, so apps and tests never share counters).

Event metrics: ``stabmon_points_ingested_total``, ``stabmon_batches_ingested_total{result}``,
``stabmon_requests_rejected_total{reason}``, ``stabmon_request_duration_seconds{route,method,status}``
(route is the template, e.g. ``/api/v1/runs/{run_id}/points``; status is the class, ``2xx``).
State metrics, computed at scrape time from the database by :class:`StoreCollector` for the
*active* runs (status running, data within ``STABMON_ACTIVE_RUN_WINDOW_S``), with bounded labels
only (never a step): ``stabmon_series_latest{project,run,layer,site,stat}`` (run-level keys such
as ``loss`` have ``layer=""``, ``site=""``), ``stabmon_alert_active{project,run,rule,severity}``
and ``stabmon_run_last_step{project,run}``. A run is named by its project and its id, since run
ids are unique only within a project. Non-finite latest values are exported as Prometheus
NaN/+Inf/-Inf.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor.store import Store

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "unauthenticated",
    "forbidden",
    "validation",
    "body_too_large",
    "not_found",
    "conflict",
    "bad_request",
    "db_unavailable",
    "overloaded",
)


class StoreCollector(Collector):
    """Latest values, open alerts and last steps of active runs, read at scrape time."""

    def __init__(self, store: Store, active_window_s: float) -> None:
        self.store = store
        self.active_window_s = active_window_s

    def describe(self) -> list:
        return []  # no describe-time DB access; the registry then skips duplicate checks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        latest = GaugeMetricFamily(
            "stabmon_series_latest",
            "Latest value of each monitored statistic of an active run.",
            labels=["project", "run", "layer", "site", "stat"],
        )
        alerts = GaugeMetricFamily(
            "stabmon_alert_active",
            "1 per open alert of an active run.",
            labels=["project", "run", "rule", "severity"],
        )
        steps = GaugeMetricFamily(
            "stabmon_run_last_step", "Highest step received from an active run.", labels=["project", "run"]
        )
        try:
            snap = self.store.metrics_snapshot(self.active_window_s)
        except Exception:  # a database hiccup must not break the scrape of the other metrics
            log.exception("metrics: cannot read run state")
            return
        for r in snap.latest:
            layer = "" if r.layer is None else str(r.layer)
            latest.add_metric([r.project, r.run_id, layer, r.site or "", r.stat], r.value)
        for project, run_id, rule, severity in snap.open_alerts:
            alerts.add_metric([project, run_id, rule, severity], 1.0)
        for (project, run_id), step in snap.last_step.items():
            steps.add_metric([project, run_id], float(step))
        yield latest
        yield alerts
        yield steps


class AppMetrics:
    """The counters and histograms of one app, plus its registry."""

    def __init__(self, store: Store | None = None, active_window_s: float = 3600.0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.points = Counter(
            "stabmon_points_ingested_total", "Values stored (after in-batch dedup).", registry=self.registry
        )
        self.batches = Counter(
            "stabmon_batches_ingested_total",
            "Point batches acknowledged, by result (stored or duplicate).",
            ["result"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "stabmon_requests_rejected_total",
            "Requests answered 4xx/503, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "stabmon_request_duration_seconds",
            "Request latency by route template, method and status class.",
            ["route", "method", "status"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        for result in ("stored", "duplicate"):
            self.batches.labels(result)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        if store is not None:
            self.registry.register(StoreCollector(store, active_window_s))

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()


class TimingMiddleware:
    """Pure ASGI middleware observing ``stabmon_request_duration_seconds``. The route label is
    the matched template (FastAPI puts the route in the scope), ``unmatched`` otherwise, so
    run ids never become label values."""

    def __init__(self, app, metrics: AppMetrics) -> None:  # noqa: ANN001
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.duration.labels(
                template, scope.get("method", ""), f"{status['code'] // 100}xx"
            ).observe(time.perf_counter() - start)
