"""The delivery log over HTTP: which webhooks an alert reached, and how each attempt went.

``GET /api/v1/runs/{run_id}/alerts/{alert_id}/deliveries`` lists the attempts for one alert,
``GET /api/v1/runs/{run_id}/deliveries`` those of every alert of the run; oldest first, URLs
redacted. Same auth as the rest of the API: a run of another project is a 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel

from monitor.api.deps import ProjectDep
from monitor.api.routes.runs import RUN_ID
from monitor.store.deliveries import SqlDeliveryLog

router = APIRouter(prefix="/api/v1/runs", tags=["alerts"])


class DeliveryPublic(BaseModel):
    alert_id: int
    run_id: str
    event: str
    """``opened`` | ``escalated`` | ``resolved``."""
    target_id: str
    """Fingerprint of the webhook URL: equal ids are the same receiver."""
    url: str
    """The webhook URL without credentials, query or path secrets."""
    format: str
    attempt: int
    outcome: str
    """``delivered`` | ``retrying`` (another attempt follows) | ``failed`` (final)."""
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: datetime


def get_delivery_log(request: Request) -> SqlDeliveryLog:
    return request.app.state.store.deliveries


LogDep = Annotated[SqlDeliveryLog, Depends(get_delivery_log)]


@router.get("/{run_id}/alerts/{alert_id}/deliveries", response_model=list[DeliveryPublic])
def alert_deliveries(
    run_id: RUN_ID, alert_id: Annotated[int, Path(ge=1, le=2**63 - 1)], project: ProjectDep, dlog: LogDep
) -> list[DeliveryPublic]:
    """Every webhook delivery attempt for this alert."""
    return [DeliveryPublic(**a.to_dict()) for a in dlog.list(project.id, run_id, alert_id)]


@router.get("/{run_id}/deliveries", response_model=list[DeliveryPublic])
def run_deliveries(run_id: RUN_ID, project: ProjectDep, dlog: LogDep) -> list[DeliveryPublic]:
    """Every webhook delivery attempt for the run's alerts."""
    return [DeliveryPublic(**a.to_dict()) for a in dlog.list(project.id, run_id)]
