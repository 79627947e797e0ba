"""``/api/v1/project``: the token's own project. ``GET``/``PUT /detector``: its detector overrides.

A token reaches only its project (there is no project in the path to name another). Overrides
apply to runs registered after the change; runs in flight keep the settings they were
registered with (see :mod:`monitor.detector_settings`).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from monitor.api.deps import DetectorSettingsDep, ProjectDep
from monitor.api.schemas import ProjectDetectorIn, ProjectDetectorOut
from stabmon.detect.layers import LayeredSettings, LayerError

router = APIRouter(prefix="/api/v1/project", tags=["project"])


def project_detector_out(project: str, settings: LayeredSettings) -> ProjectDetectorOut:
    return ProjectDetectorOut(
        project=project,
        layers=settings.layers,
        sources=settings.sources,
        effective=settings.config.model_dump(mode="json") if settings.config is not None else None,
        problem=settings.problem,
    )


@router.get("/detector", response_model=ProjectDetectorOut)
def get_detector(project: ProjectDep, detector: DetectorSettingsDep):
    """The project's detector overrides, the collector-wide ones beneath them, and the settings
    a run registered now (without overrides of its own) is judged by."""
    return project_detector_out(project.name, detector.project(project.id))


@router.put("/detector", response_model=ProjectDetectorOut)
def put_detector(body: ProjectDetectorIn, project: ProjectDep, detector: DetectorSettingsDep):
    """Replace the project's detector overrides (``{"overrides": {}}`` clears them). Unknown
    rules or fields and invalid values are refused with 422 naming them, and nothing changes.
    Runs registered from now on use the new settings; runs already registered keep theirs."""
    try:
        return project_detector_out(project.name, detector.replace_project(project.id, body.overrides))
    except LayerError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e
