"""``require_service``: a missing service skips a test locally and fails it in CI, so that a
dead PostgreSQL or a missing browser cannot turn a CI run green."""

from __future__ import annotations

import pytest

from tests._services import require_service, services_required


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("STABMON_REQUIRE_SERVICES", raising=False)


def test_locally_a_missing_service_skips_the_test(local: None) -> None:
    assert not services_required()
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL: not reachable"):
        require_service("PostgreSQL", "not reachable at 127.0.0.1:5432")


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_ci_switched_off_still_skips(local: None, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        require_service("Chromium", "not installed")


@pytest.mark.parametrize(("var", "value"), [("CI", "true"), ("CI", "1"), ("STABMON_REQUIRE_SERVICES", "1")])
def test_in_ci_a_missing_service_fails_the_test(
    local: None, monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    assert services_required()
    with pytest.raises(pytest.fail.Exception, match="required service missing: Chromium: not installed"):
        require_service("Chromium", "not installed")


def test_a_failure_is_reported_as_a_failure_not_a_skip(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through pytest itself: the same test is skipped locally and failed in CI."""
    pytester.makepyfile(
        """
        from tests._services import require_service

        def test_needs_postgres():
            require_service("PostgreSQL", "not reachable")
        """
    )
    monkeypatch.delenv("STABMON_REQUIRE_SERVICES", raising=False)
    monkeypatch.setenv("CI", "false")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    monkeypatch.setenv("CI", "true")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=1)
