"""The ingest service: one points batch in, stored points, detector findings and alerts out.

It owns the sequence of an ingest, on one unit of work the store provides
(:meth:`Store.ingest_unit`, one transaction holding the run's lock): write the points; feed the
run's rank-0 values to the detector in step order (the hooks reduce across ranks before sending,
so rank 0 carries the run's view); advance the run's alerts with the findings (the pure
lifecycle, :func:`monitor.alerts.lifecycle.advance`) and write the changed ones; save the
detector state. A 2xx therefore means points, alerts and detector state are committed together,
and a collector restart resumes from the saved state (or, when the snapshot is missing or
unreadable, rebuilds it by replaying the stored series). The webhook deliveries the changed alerts
call for are planned and put in the store's outbox in the same transaction, and handed to the
dispatcher to send once it committed; a collector that dies in between sends them at its next
start.

Between batches the service keeps each run's live state in memory, stamped with the
``run_state`` row it wrote; a batch reuses it only when the stored stamp is still that one (no
other worker process or restart wrote since), which skips parsing the snapshot back on every
batch. A detector bug never fails ingestion: the points are kept, the error is logged, the state
stays as it was.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from monitor.alerts.lifecycle import advance
from monitor.store import IngestUnit, Store
from monitor.store.codec import utcnow
from stabmon.detect import DetectorConfig
from stabmon.detect.layers import run_settings
from stabmon.wire import AlertPublic, IngestResponse, PointsIn, RunPublic, decode_value

log = logging.getLogger(__name__)

DETECTOR_RANK = 0
LIVE_STATES_MAX = 1024
"""Runs whose detector state stays in memory between batches (least recently used dropped)."""


class DetectorLike(Protocol):
    """What the ingest service needs from a detector (``stabmon.detect.Detector`` fits)."""

    def new_state(self) -> Any: ...
    def observe(self, state: Any, step: int, values: Mapping[str, float]) -> Sequence[Any]: ...


class Notifier(Protocol):
    """Hears of the alerts a batch changed, after the commit. A notifier that also has
    ``plan(run, alerts)``, ``schedule(planned)`` and ``owner`` (the webhook dispatcher) gets its
    deliveries queued in the ingest transaction instead, and scheduled after the commit."""

    def notify(self, run: Mapping[str, Any], alerts: Sequence[AlertPublic]) -> None: ...


class DetectorFactory(Protocol):
    """Builds a detector from the settings that judge a run and restores saved states."""

    def build(self, config: DetectorConfig) -> DetectorLike: ...
    def restore(self, state: dict[str, Any]) -> Any: ...
    def snapshot(self, state: Any) -> dict[str, Any]: ...


class DefaultDetectorFactory:
    """``stabmon.detect``, configured by the run's resolved settings (every layer of overrides:
    collector-wide, project, the run's own; :func:`stabmon.detect.layers.run_settings`)."""

    def build(self, config: DetectorConfig) -> DetectorLike:
        from stabmon.detect import Detector

        return Detector(config)

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

    def check_config(self, config: DetectorConfig) -> None:
        """Raises ValueError when the detector factory refuses ``config`` (a custom factory's
        own checks; the default one takes any valid config)."""
        self.detectors.build(config)

    def _detector(self, project_id: int, run_id: str) -> tuple[RunPublic, DetectorLike | None]:
        with self._lock:
            hit = self._cache.get((project_id, run_id))
        if hit is not None:
            return hit
        run = self.store.get_run(project_id, run_id)  # NotFound for unknown / other project's runs
        settings = run_settings(self.store.run_detector_layers(project_id, run_id), run.config)
        det = None
        if settings.config is None:  # a run registered before its overrides became invalid
            log.error(
                "run %s (project %s): its detector settings do not resolve (%s); ingesting without detection",
                run_id,
                project_id,
                settings.problem,
            )
        else:
            try:
                det = self.detectors.build(settings.config)
            except Exception:  # store, don't detect
                log.exception(
                    "run %s (project %s): cannot build its detector; ingesting without detection",
                    run_id,
                    project_id,
                )
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[(project_id, run_id)] = (run, det)
        return run, det

    def ingest(self, project_id: int, run_id: str, body: PointsIn) -> IngestResponse:
        run, det = self._detector(project_id, run_id)
        steps = _rank_steps(body, DETECTOR_RANK)
        live: tuple[str, Any, Any] | None = None  # (run key, stamp, state), kept once committed
        changed: list[AlertPublic] = []
        planned = None  # webhook deliveries queued in this transaction
        with self.store.ingest_unit(project_id, run_id) as unit:
            res = unit.write_points(body.batch_id, body.points)
            if not res.duplicate and det is not None and steps:
                fired = self._detect(unit, det, steps)
                if fired is not None:
                    findings, live = fired
                    changed = unit.save_alerts(advance(unit.open_alert_records(), findings, utcnow()))
                    if changed:
                        planned = self._queue_deliveries(unit, run, changed)
            alerts = unit.open_alerts()
        if live is not None:  # committed: the in-memory state is now the stored one
            key, stamp, state = live
            with self._lock:
                self._live[key] = (stamp, state)
                self._live.move_to_end(key)
                while len(self._live) > LIVE_STATES_MAX:
                    self._live.popitem(last=False)
        if res.duplicate:
            return IngestResponse(batch_id=body.batch_id, accepted=0, duplicate=True, alerts=alerts)
        if changed and self.notifier is not None:
            try:
                if planned is not None:
                    self.notifier.schedule(planned)
                else:
                    self.notifier.notify(run, changed)
            except Exception:  # a notifier must not fail an acknowledged batch
                log.exception("run %s (project %s): alert notifier failed", run_id, project_id)
        # Alerts this batch resolved are in ``changed`` only: send them too, or a job acting on
        # warnings would never hear of an episode that opened and closed within one batch.
        listed = {a.id for a in alerts}
        closed = {a.id: a for a in changed if a.id not in listed}  # the last change of each wins
        alerts = alerts + [a for a in closed.values() if a.status != "open"]
        return IngestResponse(batch_id=body.batch_id, accepted=res.accepted, duplicate=False, alerts=alerts)

    def _queue_deliveries(self, unit: IngestUnit, run: RunPublic, changed: list[AlertPublic]) -> Any:
        """Plan the webhook deliveries of ``changed`` and put them in the outbox in ``unit``'s
        transaction; None (the notifier then hears of them after the commit) when the notifier
        does not plan, or planning failed: a webhook problem must not fail the batch."""
        plan = getattr(self.notifier, "plan", None)
        if plan is None:
            return None
        try:
            planned = plan(run, changed)
        except Exception:
            log.exception("run %s: planning webhook deliveries failed; notifying after commit", run.id)
            return None
        unit.queue_deliveries(planned.pending(), self.notifier.owner)
        return planned

    def _detect(
        self, unit: IngestUnit, det: DetectorLike, steps: list[tuple[int, dict[str, float]]]
    ) -> tuple[list[tuple[int, Sequence[Any]]], tuple[str, Any, Any]] | None:
        """Feed ``steps`` to the run's detector and save its state in ``unit``. Returns the
        findings per step and (run key, stamp, state) for the in-memory cache; None if the
        detector failed."""
        key, run_id = unit.run_key, unit.run.external_id  # rows by the internal key, logs by the id
        # Taken out of the map while in use: if this transaction fails, the half-advanced state
        # is dropped and the next batch reloads the stored one.
        with self._lock:
            held = self._live.pop(key, None)
        stamp = unit.state_stamp()
        if held is not None and stamp is not None and held[0] == stamp:
            saved, state = None, held[1]
        else:
            saved, state = unit.load_state(), None
        try:
            if saved is not None:
                try:
                    state = self.detectors.restore(saved)
                except ValueError:
                    log.warning("run %s: unreadable detector state; rebuilding from stored series", run_id)
            if state is None:
                state = det.new_state()
                for step, values in unit.stored_steps(DETECTOR_RANK, before=steps[0][0]):
                    det.observe(state, step, values)
            fired = [(step, list(det.observe(state, step, values))) for step, values in steps]
            to_json = getattr(self.detectors, "snapshot_json", None)
            snapshot = to_json(state) if to_json is not None else json.dumps(self.detectors.snapshot(state))
        except Exception:
            log.exception("run %s: detector failed; points stored, detection skipped for this batch", run_id)
            return None
        return fired, (key, unit.save_state(snapshot, steps[-1][0]), state)


def _rank_steps(body: PointsIn, rank: int) -> list[tuple[int, dict[str, float]]]:
    """The batch's values at ``rank`` as (step, {key: float}) in step order (repeats: last wins)."""
    by_step: dict[int, dict[str, float]] = {}
    for p in body.points:
        if p.rank != rank:
            continue
        d = by_step.setdefault(p.step, {})
        for k, v in p.values.items():
            d[k] = decode_value(v)
    return sorted(by_step.items())
