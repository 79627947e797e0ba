"""The collector client: a sink that streams training records to the stabmon collector.

``Client(url, token=..., run=RunInfo(name=...))`` is a :class:`~trainer_hooks.client.sinks.Sink`.
:meth:`Client.write` only appends the record to a bounded in-memory deque (O(1), no lock
taken by the caller, nothing raised). Two daemon threads do the rest:

- the *batcher* drains the deque every ``poll_interval_s``, merges records into batches
  (:class:`~trainer_hooks.client.batching.Batcher`: by point count, age and body size) and
  appends each sealed batch to the on-disk :class:`~trainer_hooks.client.spool.Spool`;
- the *sender* (:class:`~trainer_hooks.client.sender.Sender`) registers the run (``POST
  /api/v1/runs`` with a client-chosen id, retried in the background until the collector
  answers, so a collector that is down at start delays nothing), then posts batches from the
  head of the spool, in order, acknowledging each on 2xx. Retryable failures
  (408/429/5xx/connection errors/timeouts) back off exponentially with jitter and honour
  ``Retry-After``; other 4xx answers move the batch to the rejected file, logged and counted.
  Alerts in ingest answers go to ``on_alert`` and ``client.alerts``.

Because a batch keeps its id from sealing to acknowledgement, a retry whose first answer
was lost is stored once. :meth:`Client.close` (also run at interpreter exit) appends the
run's status update (``PATCH``: status and summary) to the spool behind the last batch, and
waits up to a timeout for all of it to be delivered; what is undelivered stays in the spool
and a later ``Client`` with the same ``spool_dir`` and run id delivers it first, in order, so
the run's outcome is recorded after its last point even when the collector was down at the
end. Setting a status and merging a summary are idempotent, so a resent update is harmless.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from stabmon.wire import AlertPublic, RunCreate, RunStatus, RunUpdate
from trainer_hooks.client.alerts import AlertCallback, AlertTracker
from trainer_hooks.client.batching import Batcher
from trainer_hooks.client.config import ClientConfig, ClientStats, RunInfo, default_spool_dir
from trainer_hooks.client.sender import Sender
from trainer_hooks.client.spool import Spool
from trainer_hooks.client.transport import Transport

log = logging.getLogger("stabmon.client")


class _Marker:
    """Put in the record queue by flush/close: the batcher seals up to here, appends the run
    ``update`` (close) behind it, and notes the seq."""

    def __init__(self, update: dict[str, Any] | None = None) -> None:
        self.done = threading.Event()
        self.seq = 0
        self.update = update


class Client:
    """Streams records to the collector from background threads; see the module docstring."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        run: RunInfo | None = None,
        on_alert: AlertCallback | None = None,
        spool_dir: str | os.PathLike | None = None,
        config: ClientConfig | None = None,
        **overrides: Any,
    ) -> None:
        cfg = config or ClientConfig()
        if overrides:
            known = {f.name for f in dataclasses.fields(ClientConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"Client() got unknown settings {unknown}; see ClientConfig")
            cfg = dataclasses.replace(cfg, **overrides)
        self.config = cfg
        run = run or RunInfo(name="run")
        self.run_id = run.id or uuid.uuid4().hex
        # Validate now, with a clear error, rather than have every registration rejected later.
        self._run_create = RunCreate(
            id=self.run_id,
            name=run.name,
            project=run.project,
            config=json.loads(json.dumps(run.config, default=str)),
        ).model_dump(exclude_none=True)
        token = token if token is not None else os.environ.get("STABMON_TOKEN")
        self._transport = Transport(
            url, token, connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s
        )
        self._batcher = Batcher(
            max_points=cfg.max_batch_points,
            max_age_s=cfg.flush_interval_s,
            max_body_bytes=cfg.max_body_bytes,
            id_prefix=cfg.batch_id_prefix,
        )
        tag = re.sub(r"[^A-Za-z0-9_-]", "_", cfg.spool_tag or os.environ.get("RANK", "0"))
        try:
            self._spool = Spool(
                spool_dir if spool_dir is not None else default_spool_dir(),
                f"{self.run_id}.{tag}",
                max_bytes=cfg.spool_max_bytes,
                keep_every=cfg.spool_keep_every,
                fsync=cfg.spool_fsync,
            )
        except BaseException:
            self._transport.close()
            raise
        self._alerts = AlertTracker(on_alert)
        self._queue: collections.deque = collections.deque(maxlen=cfg.max_queue_records)
        self._closed = False
        self._c = collections.Counter()  # stats counters, bumped by the background threads
        self._last_error: str | None = None
        self._written = 0
        self._dropped = 0
        self._wake_batcher = threading.Event()
        self._stop_batcher = threading.Event()
        self._progress = threading.Condition()
        self._sender = Sender(
            run_id=self.run_id,
            run_create=self._run_create,
            transport=self._transport,
            spool=self._spool,
            batcher=self._batcher,
            alerts=self._alerts,
            config=cfg,
            counters=self._c,
            progress=self._progress,
            on_error=self._error,
        )
        self._batch_thread = threading.Thread(target=self._batch_loop, name="stabmon-batcher", daemon=True)
        self._batch_thread.start()
        self._sender.start()

        def _at_exit() -> None:
            self.close(timeout=self.config.atexit_timeout_s)

        self._at_exit = _at_exit
        atexit.register(_at_exit)
        log.info("stabmon client: run %s -> %s (spool %s)", self.run_id, url, self._spool.path)

    # -- the Sink interface (training thread) --------------------------------------------
    def write(self, record: dict) -> None:
        """Queue one record; O(1), never blocks, never raises. The record is not copied."""
        if self._closed:
            return
        q = self._queue
        if len(q) == q.maxlen:
            self._dropped += 1  # deque(maxlen) drops the oldest on append
        q.append(record)
        self._written += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record written so far is acknowledged (or rejected/thinned).

        Returns False if that did not happen within ``timeout`` (default
        ``config.flush_timeout_s``); what is pending stays queued and keeps being retried.
        """
        if self._closed:
            return self._spool.pending_batches == 0
        deadline = time.monotonic() + (self.config.flush_timeout_s if timeout is None else timeout)
        return self._wait_delivered(self._mark(), deadline)

    def close(
        self,
        status: RunStatus | None = "finished",
        summary: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Flush, record the run's outcome (``PATCH``), stop the threads. Idempotent.

        The outcome goes through the spool behind the last batch, like the points. Waits at
        most ``timeout`` seconds (default ``config.flush_timeout_s``). Whatever was not
        delivered (the outcome included) stays in the spool file for a later ``Client`` with
        the same run id. ``status=None`` leaves the run's status as it is (e.g. a job that will
        resume).
        """
        if self._closed:
            return
        deadline = time.monotonic() + (self.config.flush_timeout_s if timeout is None else timeout)
        update = None
        if status is not None or summary:
            update = RunUpdate(status=status, summary=summary).model_dump(mode="json", exclude_none=True)
        marker = self._mark(update)
        self._closed = True
        atexit.unregister(self._at_exit)
        self._wait_delivered(marker, deadline)
        self._stop_batcher.set()
        self._wake_batcher.set()
        # Draining the in-memory queue to disk is quick and must not be cut short.
        self._batch_thread.join(max(2.0, deadline - time.monotonic()))
        self._sender.stop(deadline)
        points, updates = self._spool.pending_points, self._spool.pending_updates
        if points or updates:
            log.warning(
                "stabmon client: %d points%s of run %s were not delivered; they stay in %s and a "
                "Client with run id %s and this spool_dir will deliver them",
                points,
                " and the run's status update" if updates else "",
                self.run_id,
                self._spool.path,
                self.run_id,
            )
        if not self._sender.alive:
            self._transport.close()
        self._spool.close()

    # -- what a training loop can poll ---------------------------------------------------
    @property
    def alerts(self) -> list[AlertPublic]:
        """The run's open alerts as of the latest ingest answer."""
        return self._alerts.open

    @property
    def stats(self) -> ClientStats:
        c, sp = self._c, self._spool
        return ClientStats(
            run_id=self.run_id,
            registered=self._sender.registered,
            records_written=self._written,
            records_dropped=self._dropped,
            invalid_records=self._batcher.stats.invalid_records,
            invalid_values=self._batcher.stats.invalid_values,
            points_spooled=c["points_spooled"],
            points_sent=c["points_sent"],
            points_acked=c["points_acked"],
            batches_acked=c["batches_acked"],
            duplicates=c["duplicates"],
            retries=c["retries"],
            spooled_bytes=sp.pending_bytes,
            spooled_points=sp.pending_points,
            spooled_batches=sp.pending_batches,
            thinned_points=sp.thinned_points,
            rejected_batches=c["rejected_batches"],
            rejected_points=c["rejected_points"],
            points_lost=c["points_lost"],
            status_pending=sp.pending_updates > 0,
            alert_callback_errors=self._alerts.callback_errors,
            last_error=self._last_error,
        )

    @property
    def spool_path(self) -> Path:
        return self._spool.path

    @property
    def rejected_path(self) -> Path:
        return self._spool.rejected_path

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(status="stopped" if exc_type is not None else "finished")

    # -- internals -------------------------------------------------------------------------
    def _mark(self, update: dict[str, Any] | None = None) -> _Marker:
        m = _Marker(update)
        if len(self._queue) == self._queue.maxlen:
            self._dropped += 1
        self._queue.append(m)
        self._wake_batcher.set()
        return m

    def _wait_delivered(self, marker: _Marker, deadline: float) -> bool:
        if not marker.done.wait(max(0.0, deadline - time.monotonic())):
            return False
        with self._progress:
            while self._spool.done_through() < marker.seq:
                left = deadline - time.monotonic()
                if left <= 0 or self._sender.fatal:
                    return False
                self._progress.wait(min(left, self.config.poll_interval_s))
        return True

    def _error(self, msg: str, level: int = logging.WARNING) -> None:
        self._last_error = msg
        log.log(level, "stabmon client: %s", msg)

    def _batch_loop(self) -> None:
        while True:
            try:
                self._drain_queue()
            except Exception as e:  # disk full, permissions: keep the thread (and training) alive
                self._error(f"batcher: {type(e).__name__}: {e}", logging.ERROR)
            if self._stop_batcher.is_set() and not self._queue:
                return
            self._wake_batcher.wait(self.config.poll_interval_s)
            self._wake_batcher.clear()

    def _drain_queue(self) -> None:
        q, b = self._queue, self._batcher
        while q:
            item = q.popleft()
            if isinstance(item, _Marker):
                sealed = b.seal_open()
                if sealed is not None:
                    self._append(sealed)
                if item.update is not None:
                    self._append_update(item.update)
                item.seq = self._spool.last_seq
                item.done.set()
                continue
            for sealed in b.add(item):
                self._append(sealed)
        if b.due():
            sealed = b.seal_open()
            if sealed is not None:
                self._append(sealed)

    def _append(self, sealed) -> None:
        try:
            self._spool.append(sealed)
        except OSError as e:
            self._c["points_lost"] += sealed.n_points
            self._error(f"cannot spool a batch of {sealed.n_points} points: {e}", logging.ERROR)
            return
        self._c["points_spooled"] += sealed.n_points
        self._sender.wake()
        with self._progress:
            self._progress.notify_all()

    def _append_update(self, update: dict[str, Any]) -> None:
        try:
            self._spool.append_update(update)
        except OSError as e:
            self._error(f"cannot spool the run's status update: {e}", logging.ERROR)
            return
        self._sender.wake()
