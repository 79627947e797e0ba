"""FastAPI dependencies, as ``Annotated`` aliases: ``StoreDep``, ``IngestDep``, ``MetricsDep``,
``SettingsDep``, ``DetectorSettingsDep`` and ``ProjectDep`` (the authenticated caller's project).

Authentication: the token comes from ``Authorization: Bearer <token>`` first, then from the
``stabmon_token`` cookie (HttpOnly, set by the dashboard's login page), so browsers and
scripts share one check. No token is 401 with ``WWW-Authenticate: Bearer``; an unknown or
revoked token is 401 too. A token only ever sees its own project: another project's run is
answered exactly like a missing one (404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from monitor.detector_settings import DetectorSettings
from monitor.ingest import IngestService
from monitor.metrics import AppMetrics
from monitor.registration import RunRegistration
from monitor.settings import Settings
from monitor.store import Project, Store

COOKIE_NAME = "stabmon_token"


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_ingest(request: Request) -> IngestService:
    return request.app.state.ingest


def get_metrics(request: Request) -> AppMetrics:
    return request.app.state.metrics


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_registration(request: Request) -> RunRegistration:
    return request.app.state.registration


def get_detector_settings(request: Request) -> DetectorSettings:
    return request.app.state.detector_settings


def token_from_request(request: Request) -> str | None:
    """The bearer token, else the cookie's; None when neither is present."""
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthenticated(request, "malformed Authorization header: expected 'Bearer <token>'")
        return value.strip()
    return request.cookies.get(COOKIE_NAME) or None


def _unauthenticated(request: Request, detail: str) -> HTTPException:
    request.app.state.metrics.reject("unauthenticated")
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def get_project(request: Request) -> Project:
    token = token_from_request(request)
    if token is None:
        raise _unauthenticated(
            request, f"missing token: send 'Authorization: Bearer <token>' (or the {COOKIE_NAME} cookie)"
        )
    project = request.app.state.store.resolve_token(token)
    if project is None:
        raise _unauthenticated(request, "invalid or revoked token")
    return project


StoreDep = Annotated[Store, Depends(get_store)]
IngestDep = Annotated[IngestService, Depends(get_ingest)]
MetricsDep = Annotated[AppMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DetectorSettingsDep = Annotated[DetectorSettings, Depends(get_detector_settings)]
RegistrationDep = Annotated[RunRegistration, Depends(get_registration)]
ProjectDep = Annotated[Project, Depends(get_project)]
