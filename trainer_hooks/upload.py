"""Sending a past run's history to the collector through the same client a live run uses.

``upload(history, url=..., token=...)`` registers the run and writes its records to a
:class:`~trainer_hooks.client.Client` exactly as the hooks would have, step by step, so the
collector stores them through the ingest API and its detector judges them as it would have live:
alerts open at the steps they would have fired. Three things differ from a live run:

- **the run id is the history's content**: ``imp-`` and a hash of the run's records, and batches
  are sealed by size alone with ids numbered from the run id, so importing the same file twice
  registers the same run (the collector returns the existing one) and sends the same batches,
  which the collector, idempotent by batch id, acknowledges as duplicates: stored once, alerts
  untouched. ``run_id=`` overrides the id;
- **pace**: a live job writes a step every few hundred milliseconds; a file has 150,000 of them at
  once. The client's in-memory queue is bounded (it drops the oldest past it, right for training,
  wrong for an import), so :func:`upload` keeps at most ``window`` records ahead of the
  collector's acknowledgements, and batches are as large as the wire allows;
- **an end**: the run is closed ``diverged`` when the divergence definition
  (`stabmon.divergence.find_divergence` over its ``loss``) says it diverged, else ``finished``, with
  the import's notes in its summary. When the collector stops answering, :func:`upload` stops
  after ``stall_timeout_s`` and says how many points it acknowledged; the rest waits in the
  client's spool, and importing the file again completes it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stabmon.divergence import find_divergence
from stabmon.history import History
from stabmon.wire import MAX_POINTS_PER_BATCH, AlertPublic
from trainer_hooks.client import Client, RunInfo

Progress = Callable[[int, int], None]
"""Called with (points acknowledged, points in the run) as the upload goes."""


@dataclass
class UploadResult:
    run_id: str
    points: int
    values: int
    acknowledged: int
    complete: bool
    seconds: float
    status: str
    alerts: list[AlertPublic] = field(default_factory=list)
    """Every alert the collector reported during the import (opened, escalated or resolved)."""
    problem: str | None = None
    """Why the upload is incomplete (None when it is complete)."""

    @property
    def values_per_minute(self) -> float:
        return self.values / self.seconds * 60 if self.seconds > 0 else 0.0


def run_id_for(history: History) -> str:
    """``imp-`` + 32 hex digits of a hash of the records: the same history, the same run."""
    # repr of ints and floats is exact and stable (nan, inf included); keys keep their order.
    h = hashlib.sha256(repr(history.records).encode())
    return "imp-" + h.hexdigest()[:32]


def outcome(history: History) -> tuple[str, dict[str, Any]]:
    """The run's closing status and the divergence part of its summary, from its loss."""
    steps, losses = history.series("loss")
    if not losses:
        return "finished", {}
    div = find_divergence(losses)
    if not div.diverged:
        return "finished", {"diverged": False}
    return "diverged", {"diverged": True, "diverged_at": steps[div.step], "divergence": div.reason}


def upload(
    history: History,
    url: str | None = None,
    token: str | None = None,
    *,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    project: str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    window: int = 30_000,
    stall_timeout_s: float = 60.0,
    client_options: dict[str, Any] | None = None,
) -> UploadResult:
    """Register ``history`` as a run and send every record (see the module docstring)."""
    rid = run_id or run_id_for(history)
    run_config = {
        "imported_from": history.source,
        "format": history.format,
        **history.config,
        **(config or {}),
    }
    alerts: list[AlertPublic] = []
    # Batches sealed by size alone (never by age) get the same ids on every import of the same
    # history, so a second import is answered as duplicates and leaves the run as it was.
    options = {
        "max_batch_points": MAX_POINTS_PER_BATCH,
        "flush_interval_s": 24 * 3600.0,
        "batch_id_prefix": f"{rid}-",
        **(client_options or {}),
    }
    window = max(window, 3 * options["max_batch_points"])
    client = Client(
        url or _env_url(),
        token=token,
        run=RunInfo(name=name or history.name, project=project, config=run_config, id=rid),
        on_alert=alerts.append,
        **options,
    )
    total = len(history.records)
    t0 = time.perf_counter()
    problem = None
    try:
        for written, record in enumerate(history.iter_records(), start=1):
            client.write(record)
            if written % 1000 == 0 and written - client.stats.points_acked >= window:
                problem = _wait(client, written - window // 2, total, progress, stall_timeout_s)
                if problem:
                    break
        if problem is None:
            client.flush(timeout=0)  # seal the last, partial batch now; _wait watches it delivered
            problem = _wait(client, total, total, progress, stall_timeout_s)
    finally:
        status, summary = outcome(history)
        if problem is None:
            summary.update(imported=True, import_notes=history.notes)
        # An incomplete import leaves the status alone: the rest is still to come.
        client.close(
            status=status if problem is None else None,
            summary=summary,
            timeout=10.0 if problem is None else 1.0,
        )
    stats = client.stats
    seconds = time.perf_counter() - t0
    if problem is None and stats.rejected_points:
        problem = f"the collector rejected {stats.rejected_points} points (kept in {client.rejected_path})"
    return UploadResult(
        run_id=rid,
        points=total,
        values=history.n_values,
        acknowledged=stats.points_acked,
        complete=problem is None and stats.points_acked >= total,
        seconds=seconds,
        status=status,
        alerts=alerts,
        problem=problem,
    )


def _wait(client: Client, target: int, total: int, progress: Progress | None, stall_s: float) -> str | None:
    """Wait until ``target`` points are acknowledged; a problem sentence if progress stalls."""
    last, since = -1, time.monotonic()
    while True:
        stats = client.stats
        acked = stats.points_acked + stats.rejected_points
        if progress is not None and acked != last:
            progress(min(stats.points_acked, total), total)
        if acked >= target:
            return None
        if not stats.registered and stats.last_error and "registration refused" in stats.last_error:
            return f"the collector refused the run: {stats.last_error}"
        if acked != last:
            last, since = acked, time.monotonic()
        elif time.monotonic() - since > stall_s:
            why = stats.last_error or "no answer"
            return (
                f"the collector acknowledged no points for {stall_s:g} s ({why}); "
                f"{stats.points_acked} of {total} are stored, the rest wait in {client.spool_path} "
                "and importing the file again completes the run"
            )
        time.sleep(0.02)


def _env_url() -> str:
    import os

    url = os.environ.get("STABMON_URL")
    if not url:
        raise ValueError("no collector URL: pass --url or set STABMON_URL")
    return url
