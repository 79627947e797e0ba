"""Registering a run: one service, called by ``POST /api/v1/runs``.

A registration with a client-chosen id that exists returns the stored run unchanged (a retried
or resumed job keeps the settings it was registered with, even if the project's changed since).
A new run's detector settings are resolved once: its ``config.detector`` on top of the
project's and the collector-wide overrides (:meth:`DetectorSettings.layers_for_new_run`); the
layers beneath the run are saved with it, and the resolved config is offered to the detector
factory, whose own checks (a custom factory's) may still refuse it.
"""

from __future__ import annotations

from monitor.detector_settings import DetectorSettings
from monitor.ingest import IngestService
from monitor.store import NotFound, Project, Store
from stabmon.wire import RunCreate, RunPublic


class ProjectMismatch(ValueError):
    """The body names another project than the token's."""


class RunRegistration:
    def __init__(self, store: Store, detector: DetectorSettings, ingest: IngestService) -> None:
        self.store, self.detector, self.ingest = store, detector, ingest

    def register(self, project: Project, body: RunCreate) -> tuple[RunPublic, bool]:
        """The run and whether it was created now. Raises :class:`ProjectMismatch`,
        :class:`~stabmon.detect.layers.LayerError` (``layer == "run"``: the run's own overrides
        are invalid; ``"project"``: the project's no longer fit the collector-wide ones), or
        ValueError (the detector factory refused the settings)."""
        if body.project is not None and body.project != project.name:
            raise ProjectMismatch(f"the token belongs to project {project.name!r}, not {body.project!r}")
        if body.id is not None:
            try:
                return self.store.get_run(project.id, body.id), False
            except NotFound:
                pass
        layers, config = self.detector.layers_for_new_run(project.id, body.config)
        self.ingest.check_config(config)
        return self.store.create_run(project.id, body, layers)
