"""``GET /api/v1/runs/{run_id}/alerts``: the run's alerts, open and resolved."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from monitor.api.deps import ProjectDep, StoreDep
from monitor.api.routes.runs import RUN_ID
from stabmon.wire import AlertPublic, AlertStatus

router = APIRouter(prefix="/api/v1/runs", tags=["alerts"])


@router.get("/{run_id}/alerts", response_model=list[AlertPublic])
def list_alerts(
    run_id: RUN_ID,
    project: ProjectDep,
    store: StoreDep,
    status: Annotated[AlertStatus | None, Query(description="Only open or only resolved alerts.")] = None,
):
    """Oldest first. At most one alert per rule is open at a time."""
    return store.list_alerts(project.id, run_id, status=status)
