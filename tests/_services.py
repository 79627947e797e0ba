"""What a test does when a service it needs is missing (PostgreSQL, headless Chromium, the
Prometheus tools, ``psql``): locally it is skipped, so a machine without PostgreSQL still runs
everything else; in CI it fails, because there a dead database or a missing browser is a broken
environment, and skipping would turn the run green without having tested anything.

CI is recognised by ``CI`` (set to ``true`` by CI systems) or ``STABMON_REQUIRE_SERVICES=1``
(to get CI's strictness on a workstation).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

_OFF = ("", "0", "false", "no")


def services_required() -> bool:
    """Whether a missing service fails the run (CI) rather than skipping the test (locally)."""
    ci = os.environ.get("CI", "").strip().lower() not in _OFF
    return ci or os.environ.get("STABMON_REQUIRE_SERVICES", "").strip() == "1"


def require_service(name: str, reason: str) -> NoReturn:
    """Called where ``name`` was found missing: skips the test with ``reason``, or, when
    services are required, fails it with the same reason and how to get strictness off."""
    if services_required():
        pytest.fail(
            f"required service missing: {name}: {reason} "
            "(CI or STABMON_REQUIRE_SERVICES=1 is set, so this fails instead of skipping)",
            pytrace=False,
        )
    pytest.skip(f"{name}: {reason}")
