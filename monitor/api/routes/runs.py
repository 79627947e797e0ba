"""``/api/v1/runs``: register (idempotent by client-chosen id), list, read, update runs, and
show the detector settings a run is judged by."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from monitor.api.deps import DetectorSettingsDep, ProjectDep, RegistrationDep, StoreDep
from monitor.api.schemas import RunDetectorOut, RunList
from monitor.registration import ProjectMismatch
from stabmon.detect.layers import LayerError
from stabmon.wire import RunCreate, RunPublic, RunStatus, RunUpdate

RUN_ID = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The run's id.")]

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])


@router.post(
    "",
    response_model=RunPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": RunPublic, "description": "A run with this id already exists in the project."}},
)
def create_run(
    body: RunCreate,
    project: ProjectDep,
    registration: RegistrationDep,
    response: Response,
):
    """Register a run in the token's project. With a client-chosen ``id`` the call is
    idempotent: the same id again returns the stored run with 200 (its name/config are not
    changed). Ids are per project: one that another project uses is simply a new run here.

    A new run's detector settings are resolved here: its ``config.detector`` on top of the
    project's and the collector-wide overrides, which are saved with the run (422 naming the
    rule or field when its own are invalid, 409 when the project's no longer fit the
    collector-wide ones). See ``GET /api/v1/runs/{run_id}/detector``."""
    try:
        run, created = registration.register(project, body)
    except ProjectMismatch as e:
        raise HTTPException(status_code=403, detail=str(e)) from e
    except LayerError as e:
        if e.layer == "run":  # the message names config.detector
            raise HTTPException(status_code=422, detail=str(e)) from e
        raise HTTPException(status_code=409, detail=f"{e}; fix them with PUT /api/v1/project/detector") from e
    except ValueError as e:
        raise HTTPException(status_code=422, detail=f"config.detector: {e}") from e
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


@router.get("/{run_id}/detector", response_model=RunDetectorOut)
def get_run_detector(run_id: RUN_ID, project: ProjectDep, store: StoreDep, detector: DetectorSettingsDep):
    """What the run is judged by: the collector-wide and project overrides saved when it was
    registered, its own ``config.detector``, which layer each overridden key comes from, and
    every rule's effective settings. ``effective`` is null, and ``problem`` says why, for a run
    that is not judged (its own overrides are invalid: registered before they were checked)."""
    run = store.get_run(project.id, run_id)
    settings = detector.run(project.id, run)
    return RunDetectorOut(
        run_id=run.id,
        resolved_at=run.created_at,
        layers=settings.layers,
        sources=settings.sources,
        effective=settings.config.model_dump(mode="json") if settings.config is not None else None,
        problem=settings.problem,
    )


@router.patch("/{run_id}", response_model=RunPublic)
def update_run(run_id: RUN_ID, body: RunUpdate, project: ProjectDep, store: StoreDep):
    """Set the run's status (the training job decides it; alerts never change it) and merge
    ``summary`` keys into the stored summary."""
    return store.update_run(project.id, run_id, body)
