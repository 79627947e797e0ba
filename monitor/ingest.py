"""The ingest service: one points batch in, stored points, detector findings and alerts out.

For a batch it runs, inside the store's one write transaction (:meth:`Store.write_points`):
store the points; feed the run's rank-0 values to the detector in step order (the hooks reduce
across ranks before sending, so rank 0 carries the run's view); open, update or resolve
alerts; save the detector state in ``run_state``. A 2xx therefore means points, alerts and
detector state are committed together, and a collector restart resumes from the saved state
(or, when the snapshot is missing or unreadable, rebuilds it by replaying the stored series).
Between batches the service keeps each run's live state in memory, stamped with the
``run_state`` row it wrote; a batch reuses it only when the stored stamp is still that one (no
other worker process or restart wrote since), which skips parsing the snapshot back on every
batch. A detector bug never fails ingestion: the points are kept, the error is logged, the state
stays as it was. Alerts that changed go to an optional notifier (webhooks) after the commit.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection

from monitor.store import Store
from monitor.store.alerts import (
    apply_findings,
    load_state,
    open_alerts,
    save_state,
    state_stamp,
    stored_steps,
)
from monitor.store.codec import wire_to_float
from monitor.store.runs import RunRef
from stabmon.detect.layers import effective_run_config
from stabmon.wire import AlertPublic, IngestResponse, PointsIn, RunPublic

log = logging.getLogger(__name__)

DETECTOR_RANK = 0
LIVE_STATES_MAX = 1024
"""Runs whose detector state stays in memory between batches (least recently used dropped)."""


class DetectorLike(Protocol):
    """What the ingest service needs from a detector (``stabmon.detect.Detector`` fits)."""

    def new_state(self) -> Any: ...
    def observe(self, state: Any, step: int, values: Mapping[str, float]) -> Sequence[Any]: ...


class Notifier(Protocol):
    def notify(self, run: Mapping[str, Any], alerts: Sequence[AlertPublic]) -> None: ...


class DetectorFactory(Protocol):
    """Builds a detector from a run's config and restores saved states."""

    def build(self, run_config: Mapping[str, Any]) -> DetectorLike: ...
    def restore(self, state: dict[str, Any]) -> Any: ...
    def snapshot(self, state: Any) -> dict[str, Any]: ...


class DefaultDetectorFactory:
    """``stabmon.detect``, configured by ``run_config["detector"]``: the ingest service passes
    the run's config with every layer of overrides merged there (collector-wide, project, the
    run's own; see :mod:`monitor.detector_settings`)."""

    def build(self, run_config: Mapping[str, Any]) -> DetectorLike:
        from stabmon.detect import Detector, DetectorConfig

        return Detector(DetectorConfig.from_overrides(run_config.get("detector") or {}))

    def restore(self, state: dict[str, Any]) -> Any:
        from stabmon.detect import DetectorState

        return DetectorState.from_dict(state)

    def snapshot(self, state: Any) -> dict[str, Any]:
        return state.to_dict()

    def snapshot_json(self, state: Any) -> str:
        """The snapshot as stored text (what ``json.dumps(snapshot(state))`` gives, faster)."""
        return state.to_json()


class IngestService:
    """Stores batches and runs detection; shared by all requests of an app (thread-safe)."""

    def __init__(
        self,
        store: Store,
        detectors: DetectorFactory | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.detectors = detectors if detectors is not None else DefaultDetectorFactory()
        self.notifier = notifier
        # A run's config and saved detector layers never change after creation, so its detector
        # can be cached. Keyed by (project id, run id): run ids are only unique within a project.
        self._cache: dict[tuple[int, str], tuple[RunPublic, DetectorLike | None]] = {}
        # run's internal key -> (stamp of the run_state row this process wrote, the state it holds)
        self._live: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def check_config(self, run_config: Mapping[str, Any], layers: Mapping[str, Any] | None = None) -> None:
        """Raises ValueError when the detector cannot be built from ``run_config["detector"]``
        on top of ``layers`` (the collector-wide and project overrides saved with the run)."""
        self.detectors.build(effective_run_config(run_config, layers))

    def _detector(self, project_id: int, run_id: str) -> tuple[RunPublic, DetectorLike | None]:
        with self._lock:
            hit = self._cache.get((project_id, run_id))
        if hit is not None:
            return hit
        run = self.store.get_run(project_id, run_id)  # NotFound for unknown / other project's runs
        layers = self.store.run_detector_layers(project_id, run_id)
        try:
            det = self.detectors.build(effective_run_config(run.config, layers))
        except Exception:  # a run registered before its config became invalid: store, don't detect
            log.exception(
                "run %s (project %s): cannot build its detector; ingesting without detection",
                run_id,
                project_id,
            )
            det = None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(project_id, run_id)] = (run, det)
        return run, det

    def ingest(self, project_id: int, run_id: str, body: PointsIn) -> IngestResponse:
        run, det = self._detector(project_id, run_id)
        steps = _rank_steps(body, DETECTOR_RANK)
        live: list[tuple[str, Any, Any]] = []  # (run key, stamp, state) this batch left, kept once committed

        def after(conn: Connection, ref: RunRef) -> tuple[list[AlertPublic], list[AlertPublic]]:
            changed: list[AlertPublic] = []
            if det is not None and steps:
                fired = self._detect(conn, ref, det, steps, live)
                if fired is not None:
                    changed = apply_findings(conn, ref, fired)
            return open_alerts(conn, ref), changed

        res = self.store.write_points(project_id, run_id, body.batch_id, body.points, after=after)
        if live:  # committed: the in-memory state is now the stored one
            key, stamp, state = live[-1]
            with self._lock:
                self._live[key] = (stamp, state)
                self._live.move_to_end(key)
                while len(self._live) > LIVE_STATES_MAX:
                    self._live.popitem(last=False)
        if res.duplicate:
            return IngestResponse(
                batch_id=body.batch_id,
                accepted=0,
                duplicate=True,
                alerts=self.store.open_alerts(project_id, run_id),
            )
        alerts, changed = res.after
        if changed and self.notifier is not None:
            try:
                self.notifier.notify(run, changed)
            except Exception:  # a notifier must not fail an acknowledged batch
                log.exception("run %s (project %s): alert notifier failed", run_id, project_id)
        # Alerts this batch resolved are in ``changed`` only: send them too, or a job acting on
        # warnings would never hear of an episode that opened and closed within one batch.
        listed = {a.id for a in alerts}
        closed = {a.id: a for a in changed if a.id not in listed}  # the last change of each wins
        alerts = alerts + [a for a in closed.values() if a.status != "open"]
        return IngestResponse(batch_id=body.batch_id, accepted=res.accepted, duplicate=False, alerts=alerts)

    def _detect(
        self,
        conn: Connection,
        ref: RunRef,
        det: DetectorLike,
        steps: list[tuple[int, dict[str, float]]],
        live: list[tuple[str, Any, Any]],
    ) -> list[tuple[int, Sequence[Any]]] | None:
        """Feed ``steps`` to the run's detector; save its state (and append (run key, stamp,
        state) to ``live``). None if the detector failed."""
        key, run_id = ref.pk, ref.external_id  # rows by the internal key, logs by the run's id
        # Taken out of the map while in use: if this transaction fails, the half-advanced state
        # is dropped and the next batch reloads the stored one.
        with self._lock:
            held = self._live.pop(key, None)
        stamp = state_stamp(conn, key)
        if held is not None and stamp is not None and held[0] == stamp:
            saved, state = None, held[1]
        else:
            saved, state = load_state(conn, key)[0], None
        try:
            if saved is not None:
                try:
                    state = self.detectors.restore(saved)
                except ValueError:
                    log.warning("run %s: unreadable detector state; rebuilding from stored series", run_id)
            if state is None:
                state = det.new_state()
                for step, values in stored_steps(conn, key, DETECTOR_RANK, before=steps[0][0]):
                    det.observe(state, step, values)
            fired = [(step, list(det.observe(state, step, values))) for step, values in steps]
            to_json = getattr(self.detectors, "snapshot_json", None)
            snapshot = to_json(state) if to_json is not None else json.dumps(self.detectors.snapshot(state))
        except Exception:
            log.exception("run %s: detector failed; points stored, detection skipped for this batch", run_id)
            return None
        live.append((key, save_state(conn, key, snapshot, steps[-1][0]), state))
        return fired


def _rank_steps(body: PointsIn, rank: int) -> list[tuple[int, dict[str, float]]]:
    """The batch's values at ``rank`` as (step, {key: float}) in step order (repeats: last wins)."""
    by_step: dict[int, dict[str, float]] = {}
    for p in body.points:
        if p.rank != rank:
            continue
        d = by_step.setdefault(p.step, {})
        for k, v in p.values.items():
            d[k] = wire_to_float(v)
    return sorted(by_step.items())
