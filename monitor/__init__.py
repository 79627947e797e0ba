"""The stabmon collector: a FastAPI service that ingests per-step training statistics,
stores them in SQL (SQLite embedded, or PostgreSQL), runs the divergence detector online
over each run, and serves series, latest values, alerts and Prometheus metrics.

It never imports torch: the training side talks to it only through the wire contract in
:mod:`stabmon.wire`. Entry points: :func:`monitor.api.create_app` and :class:`monitor.settings.Settings`.
"""
