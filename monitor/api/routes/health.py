"""Liveness, readiness and Prometheus metrics (no API token needed).

``/healthz`` answers while the process runs; ``/readyz`` also reaches the database (503 with
``Retry-After`` when it cannot). ``/metrics`` is open unless ``STABMON_METRICS_TOKEN`` is set,
then it needs ``Authorization: Bearer <that token>`` (Prometheus: ``authorization.credentials``).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.api.deps import MetricsDep, SettingsDep, StoreDep
from monitor.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz():
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"description": "Database unreachable."}})
def readyz(store: StoreDep):
    store.ping()  # OperationalError -> 503 with Retry-After (see monitor.api.errors)
    return Health(status="ready")


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request, settings: SettingsDep, m: MetricsDep):
    if settings.metrics_token:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), settings.metrics_token):
            m.reject("unauthenticated")
            raise HTTPException(
                status_code=401,
                detail="metrics need 'Authorization: Bearer <STABMON_METRICS_TOKEN>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
