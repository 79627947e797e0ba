"""``/api/v1/runs``: register (idempotent by client-chosen id), list, read, update runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from monitor.api.deps import IngestDep, ProjectDep, StoreDep
from monitor.api.schemas import RunList
from stabmon.wire import RunCreate, RunPublic, RunStatus, RunUpdate

RUN_ID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The run's id.")]

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


@router.post(
    "",
    response_model=RunPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": RunPublic, "description": "A run with this id already exists in the project."}},
)
def create_run(body: RunCreate, project: ProjectDep, store: StoreDep, ingest: IngestDep, response: Response):
    """Register a run in the token's project. With a client-chosen ``id`` the call is
    idempotent: the same id again returns the stored run with 200 (its name/config are not
    changed). A ``detector`` section in ``config`` is validated here (422 on unknown rules)."""
    if body.project is not None and body.project != project.name:
        raise HTTPException(
            status_code=403, detail=f"the token belongs to project {project.name!r}, not {body.project!r}"
        )
    try:
        ingest.check_config(body.config)
    except ValueError as e:
        raise HTTPException(status_code=422, detail=f"config.detector: {e}") from e
    run, created = store.create_run(project.id, body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return run


@router.get("", response_model=RunList)
def list_runs(
    project: ProjectDep,
    store: StoreDep,
    status_: Annotated[RunStatus | None, Query(alias="status")] = None,
    variant: Annotated[str | None, Query(max_length=200, description="config.variant")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
):
    """The project's runs, newest first, filtered by status and ``config.variant``."""
    items, total = store.list_runs(project.id, status=status_, variant=variant, limit=limit, offset=offset)
    return RunList(items=items, total=total, limit=limit, offset=offset)


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: RUN_ID, project: ProjectDep, store: StoreDep):
    return store.get_run(project.id, run_id)


@router.patch("/{run_id}", response_model=RunPublic)
def update_run(run_id: RUN_ID, body: RunUpdate, project: ProjectDep, store: StoreDep):
    """Set the run's status (the training job decides it; alerts never change it) and merge
    ``summary`` keys into the stored summary."""
    return store.update_run(project.id, run_id, body)
