"""Suite-wide: which tests are ``integration`` tests.

A test is an integration test when it needs something outside this Python process: a real
server, a subprocess, a database server, a browser, several training processes. Unit tests
(the rest) run alone with ``pytest -m "not integration"`` (``make test-unit``) in about a
minute of CPU time. Modules that start processes mark themselves (``pytestmark``, or one test's
decorator); tests that need a service are marked here, from what they use, so a new test on
PostgreSQL, Chromium or Prometheus cannot be forgotten.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# Markers that name a service outside this process (see pyproject.toml).
SERVICE_MARKERS = ("postgres", "browser", "prometheus")
# Fixtures that start or reach one: the PostgreSQL schemas, the dashboard's seeded collector
# process, headless Chromium, the Grafana history database.
SERVICE_FIXTURES = frozenset({"pg_schema_url", "seeded", "browser", "history_db"})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration"):
            continue
        uses = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if uses or any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
            item.add_marker(pytest.mark.integration)
