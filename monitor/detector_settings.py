"""The detector's settings as the collector applies them: built-in defaults < collector-wide
(``STABMON_DETECTOR``) < project < run (``config.detector``).

Glue between the pure layers of :mod:`stabmon.detect.layers` and the store, shared by the API
routes, the ``stabmon project detector`` command and run registration.

When a change applies: a run's layers are resolved when it is registered. The collector-wide
and project overrides of that moment are saved with the run (``runs.detector_layers``), and the
run is judged by them and its own overrides to its end. A project or collector change therefore
affects runs registered after it, never one in flight, whose detector state (baselines,
hysteresis levels) keeps the meaning it was built with. A retried or resumed registration of a
run that exists keeps the run's saved layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monitor.store import Store
from stabmon.detect import DetectorConfig
from stabmon.detect.config import nest_overrides
from stabmon.detect.layers import (
    LAYER_NAMES,
    LayeredSettings,
    LayerError,
    canonical,
    layered,
    merge,
    resolve,
    run_settings,
    without,
)
from stabmon.wire import RunPublic


class DetectorSettings:
    """The collector-wide layer, and the project and run layers kept in ``store``."""

    def __init__(self, store: Store, collector: Mapping[str, Any] | None = None) -> None:
        self.store = store
        self.collector = canonical(collector, "collector")

    # -- projects ---------------------------------------------------------------------------
    def project(self, project_id: int) -> LayeredSettings:
        """The project's layer and what a run registered now, without overrides of its own,
        would be judged by."""
        return layered({"collector": self.collector, "project": self.store.project_detector(project_id)})

    def replace_project(self, project_id: int, overrides: Mapping[str, Any] | None) -> LayeredSettings:
        """Set the project's overrides to ``overrides`` (``{}`` clears them). Raises LayerError
        naming the unknown rule or field, or the invalid value, and stores nothing then."""
        self.store.update_project_detector(project_id, lambda _old: self._project_layer(overrides))
        return self.project(project_id)

    def edit_project(
        self,
        project_id: int,
        set_: Mapping[str, Any] | None = None,
        unset: Sequence[str] = (),
        clear: bool = False,
    ) -> LayeredSettings:
        """Change some of the project's overrides: ``clear`` drops them all, then each key of
        ``unset`` (``rule.field``, ``rule`` or a top-level field) is dropped and ``set_`` (nested
        or dotted keys) applied. All or nothing: any bad key or value raises LayerError."""

        def change(old: dict[str, Any]) -> dict[str, Any]:
            new = {} if clear else old
            try:
                for key in unset:
                    new = without(new, key)
                new = merge(new, nest_overrides(set_))
            except ValueError as e:
                raise LayerError("project", f"{LAYER_NAMES['project']}: {e}") from None
            return self._project_layer(new)  # checks the values over the collector-wide layer

        self.store.update_project_detector(project_id, change)
        return self.project(project_id)

    def _project_layer(self, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        return canonical(overrides, "project", below={"collector": self.collector})

    # -- runs -------------------------------------------------------------------------------
    def layers_for_new_run(
        self, project_id: int, run_config: Mapping[str, Any]
    ) -> tuple[dict[str, Any], DetectorConfig]:
        """The layers to save with a run being registered (``{"collector": ..., "project":
        ...}``) and the config they resolve to with the run's own overrides. Raises LayerError
        when the run's own overrides are invalid, alone or on top of them (``layer == "run"``),
        or when the project's no longer fit the collector-wide ones (``layer == "project"``)."""
        done, config = resolve(
            {
                "collector": self.collector,
                "project": self.store.project_detector(project_id),
                "run": run_config.get("detector"),
            }
        )
        return {name: layer for name, layer in done.items() if name != "run"}, config

    def run(self, project_id: int, run: RunPublic) -> LayeredSettings:
        """What the project's ``run`` is judged by: the layers saved at its registration and
        its own overrides."""
        return run_settings(self.store.run_detector_layers(project_id, run.id), run.config)
