"""The stabmon dashboard: read-only Plotly pages served by the collector itself — the runs
list, a run (loss, per-site layer x step norm heatmaps, attention logits against the
detector's thresholds, grad norm, LR, alerts; live while the run trains), the compare page
and the learning-rate sweep — plus the Grafana/Prometheus files under ``deploy/``.

The pages are HTML shells whose JavaScript reads the collector's JSON API with a session
cookie and draws with Plotly.js, served from the installed ``plotly`` package (no CDN). This
package never imports torch and holds no SQL. Mount it on the collector with
:func:`mount`.
"""

from __future__ import annotations

from fastapi import FastAPI

from dashboard.pages import router

__all__ = ["mount", "router"]


def mount(app: FastAPI) -> None:
    """Serve the dashboard pages and assets from ``app`` (the collector's FastAPI app)."""
    app.include_router(router)
