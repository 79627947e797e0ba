"""Delivers alert events to webhooks in the background, with retries and a delivery log.

The ingest path calls :meth:`AlertDispatcher.notify` with the alerts a batch changed; that
call only appends to an in-memory queue (O(1), never blocks, never raises), so a slow,
failing or hanging receiver cannot slow ingest. Behind it:

- one *planner* thread turns alerts into events (``opened``, ``escalated``, ``resolved``;
  see :mod:`monitor.alerts.payload`), picks the run's targets (global ``STABMON_WEBHOOK_URLS``
  plus the run's ``config.webhooks``), skips events the delivery log says were already
  delivered (so a collector restart does not page twice) and schedules one delivery per
  (event, target);
- ``webhook_workers`` *sender* threads take due deliveries from a time-ordered heap and POST
  them (:mod:`monitor.alerts.delivery_http`: 2xx is delivered; 408/429/5xx, connection errors
  and timeouts are retried with exponential backoff up to ``webhook_max_attempts``; any other
  4xx is final).
  Each attempt is one :class:`~monitor.alerts.log.DeliveryAttempt` in the log.

A receiver that hangs occupies one sender for ``webhook_timeout_s`` per attempt; the other
senders keep delivering to everyone else.

Every scheduled delivery is also in the :mod:`outbox <monitor.alerts.outbox>` until it ends, with
its next attempt number and due time. Retries pending at shutdown (and deliveries not yet tried)
stay there, and a dispatcher that starts on the same database resumes them first, with their
attempt count and backoff; so does one started after a crash. With the in-memory outbox they
are dropped at shutdown (counted in :attr:`stats` as ``abandoned``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from monitor.alerts.delivery import STAT_NAMES, Delivery, Planned
from monitor.alerts.delivery_http import backoff, is_retryable, post_once
from monitor.alerts.events import classify_events
from monitor.alerts.log import DeliveryAttempt, DeliveryLog, MemoryDeliveryLog
from monitor.alerts.outbox import Key, MemoryOutbox, Outbox
from monitor.alerts.outbox_sync import OutboxSync
from monitor.alerts.payload import build_payload
from monitor.alerts.settings import WebhookSettings
from monitor.alerts.targets import merge_targets, run_targets

log = logging.getLogger("stabmon.alerts")

_STOP = object()
_RESUME = object()


class AlertDispatcher(OutboxSync):
    """Background webhook delivery. ``start()`` once, ``notify()`` from anywhere, ``stop()`` at exit.

    ``http`` (an ``httpx.Client``) and ``clock`` are injectable for tests; the default client
    uses ``webhook_timeout_s`` and does not follow redirects (a webhook that redirects is
    misconfigured, and following it could leak the body elsewhere). ``outbox`` keeps what is
    owed across restarts (default: in memory, so nothing is).
    """

    def __init__(
        self,
        settings: WebhookSettings | None = None,
        delivery_log: DeliveryLog | None = None,
        *,
        outbox: Outbox | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or WebhookSettings()
        self.log: DeliveryLog = delivery_log if delivery_log is not None else MemoryDeliveryLog()
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.owner = uuid.uuid4().hex  # this dispatcher's name in the outbox
        self._global_targets = self.settings.global_targets()
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(self.settings.webhook_timeout_s),
            follow_redirects=False,
            headers={"User-Agent": "stabmon-alerts/1", "Content-Type": "application/json"},
        )
        self._owns_http = http is None
        self._clock = clock
        self._inbox: queue.Queue[Any] = queue.Queue(maxsize=self.settings.webhook_queue_size)
        self._heap: list[Delivery] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._seen: dict[int, tuple[str, str]] = {}
        self._threads: list[threading.Thread] = []
        self._in_flight = 0
        self._busy: set[str] = set()  # target ids with a request in flight
        self._pending: set[Key] = set()  # deliveries in the heap or in flight
        self._stopping = False
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> AlertDispatcher:
        if self._threads:
            return self
        self._stopping = False
        self._inbox.put(_RESUME)  # the planner's first job: what a previous dispatcher left owed
        planner = threading.Thread(target=self._plan_loop, name="stabmon-alerts-planner", daemon=True)
        self._threads.append(planner)
        for i in range(self.settings.webhook_workers):
            self._threads.append(
                threading.Thread(target=self._send_loop, name=f"stabmon-alerts-sender-{i}", daemon=True)
            )
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is due within ``timeout`` seconds, then stop; later retries stay in a
        durable outbox for the next start (the in-memory one drops them)."""
        if not self._threads:
            return
        self.wait_idle(timeout=timeout, due_only=True)
        self._inbox.put(_STOP)
        with self._cond:
            self._stopping = True
            abandoned = len(self._heap)
            self._heap.clear()
            self._pending.clear()
            self._cond.notify_all()
        if abandoned:
            self._bump("abandoned", abandoned)
            fate = "kept in the outbox for the next start" if self.outbox.durable else "dropped"
            log.warning("alert dispatcher stopped with %d webhook deliveries pending; %s", abandoned, fate)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AlertDispatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- intake (ingest path) -------------------------------------------------------
    def notify(self, run: Mapping[str, Any], alerts: Iterable[Mapping[str, Any]]) -> None:
        """Queue alert snapshots of one run (AlertPublic-shaped dicts or models). Never blocks."""
        snapshot = [a.model_dump() if hasattr(a, "model_dump") else dict(a) for a in alerts]
        if not snapshot:
            return
        run_d = run.model_dump() if hasattr(run, "model_dump") else dict(run)
        try:
            self._inbox.put_nowait((run_d, snapshot))
            self._bump("notified")
        except queue.Full:
            self._bump("dropped", len(snapshot))
            log.warning("alert dispatcher queue full: %d alert updates dropped", len(snapshot))

    def wait_idle(self, timeout: float = 10.0, due_only: bool = False) -> bool:
        """Block until nothing is queued or in flight (with ``due_only``, retries scheduled
        later do not count). For tests and shutdown; True if idle was reached."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                now = self._clock()
                pending = [d for d in self._heap if not due_only or d.due <= now]
                if self._inbox.unfinished_tasks == 0 and not pending and self._in_flight == 0:
                    return True
            time.sleep(0.01)
        return False

    # -- planner --------------------------------------------------------------------
    def _plan_loop(self) -> None:
        while True:
            item = self._inbox.get()
            try:
                if item is _STOP:
                    return
                if item is _RESUME:
                    self._resume()
                    continue
                run, alerts = item
                self._plan(run, alerts)
            except Exception:  # a bad run config or a log failure must not kill the thread
                log.exception("alert dispatcher: planning failed")
            finally:
                self._inbox.task_done()

    def _plan(self, run: dict[str, Any], alerts: list[dict[str, Any]]) -> None:
        planned = self.plan(run, alerts)
        for d in planned.deliveries:
            self._persist(d, delay=0.0)
        self.schedule(planned)

    def plan(self, run: Mapping[str, Any], alerts: Iterable[Mapping[str, Any]]) -> Planned:
        """The deliveries that alert snapshots of one run call for, neither stored nor
        scheduled: the ingest service writes them to the outbox inside its transaction
        (:attr:`Planned.pending`) and hands them to :meth:`schedule` once it committed. Events
        already delivered (a restart must not page twice) or already owed are left out."""
        run_d = run.model_dump() if hasattr(run, "model_dump") else dict(run)
        snapshot = [a.model_dump() if hasattr(a, "model_dump") else dict(a) for a in alerts]
        own, errors = run_targets(run_d.get("config"))
        for err in errors:
            log.warning("run %s: ignoring webhook %s", run_d.get("id"), err)
        targets = merge_targets(self._global_targets, own)
        # Classified against a copy: what this dispatcher has notified changes only when the
        # plan is scheduled (a rolled-back ingest must not make its escalation look sent).
        seen = {int(a["id"]): self._seen[int(a["id"])] for a in snapshot if int(a["id"]) in self._seen}
        planned = Planned(seen=seen)
        for event, alert in classify_events(snapshot, seen):
            self._bump("events")
            for target in targets:
                if not target.wants(str(alert["severity"])):
                    continue
                if self.log.delivered(int(alert["id"]), event, target.target_id):
                    self._bump("skipped_delivered")
                    continue
                with self._cond:
                    # Resumed from the outbox and not yet sent: the alert is new to this
                    # dispatcher's memory, not to the receiver.
                    owed = (int(alert["id"]), event, target.target_id) in self._pending
                if owed:
                    self._bump("skipped_pending")
                    continue
                payload = build_payload(target.format, event, alert, run_d, self.settings.public_url)
                planned.deliveries.append(
                    Delivery(
                        due=self._clock(),
                        seq=next(self._seq),
                        target=target,
                        event=event,
                        alert_id=int(alert["id"]),
                        run_id=str(run_d["id"]),
                        payload=payload,
                        run_config=dict(run_d.get("config") or {}),
                    )
                )
        return planned

    def schedule(self, planned: Planned) -> None:
        """Send what :meth:`plan` planned (already in the outbox) and remember its events."""
        for aid, state in planned.seen.items():
            if state[1] == "resolved":
                # A resolved alert never changes again: forget it, so memory stays bounded.
                self._seen.pop(aid, None)
            else:
                self._seen[aid] = state
        for d in planned.deliveries:
            self._schedule(d, new=True)

    def _schedule(self, d: Delivery, new: bool = False) -> bool:
        """Put ``d`` on the heap; False if it was not. ``new``: only if its key is not owed
        already (the outbox is resumed on a thread of its own, and may have taken a just-queued
        row first)."""
        with self._cond:
            if new and d.key in self._pending:
                return False
            if self._stopping:
                self._pending.discard(d.key)
                self._bump("abandoned")
                return False
            heapq.heappush(self._heap, d)
            self._pending.add(d.key)
            self._cond.notify()
            return True

    # -- senders --------------------------------------------------------------------
    def _next_due(self) -> Delivery | None:
        """The earliest due delivery whose target is not already being sent to.

        One request in flight per target: a hanging receiver then holds one sender, not all
        of them, and a target gets its events in order (opened before resolved).
        """
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = self._clock()
                ready = [d for d in self._heap if d.due <= now and d.target.target_id not in self._busy]
                if ready:
                    d = min(ready)
                    self._heap.remove(d)
                    heapq.heapify(self._heap)
                    self._busy.add(d.target.target_id)
                    self._in_flight += 1
                    return d
                future = [d.due - now for d in self._heap if d.due > now]
                self._cond.wait(timeout=min(min(future), 1.0) if future else 1.0)

    def _send_loop(self) -> None:
        while True:
            d = self._next_due()
            if d is None:
                return
            try:
                self._attempt(d)
            except Exception:
                log.exception("alert dispatcher: delivery attempt crashed")
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._busy.discard(d.target.target_id)
                    self._cond.notify_all()

    def _attempt(self, d: Delivery) -> None:
        s = self.settings
        if d.persisted and not self._outbox_call(self.outbox.owns, d.key, self.owner, default=True):
            # A collector that started since took it over (or it already ended there).
            self._bump("taken_over")
            with self._cond:
                self._pending.discard(d.key)
            return
        r = post_once(self._http, d.target.url, d.payload)
        self._bump("attempts")

        if r.delivered:
            outcome = "delivered"
        elif (
            is_retryable(r.status)
            and d.attempt < s.webhook_max_attempts
            and (self.outbox.durable or not self._stopping)
        ):
            # Stopping with a durable outbox: the retry waits there for the next start.
            outcome = "retrying"
        else:
            outcome = "failed"
        self.log.record(
            DeliveryAttempt(
                alert_id=d.alert_id,
                run_id=d.run_id,
                event=d.event,
                target_id=d.target.target_id,
                url=d.target.display_url,
                format=d.target.format,
                attempt=d.attempt,
                outcome=outcome,
                status_code=r.status,
                error=r.error,
                duration_ms=round(r.duration_ms, 3),
            )
        )
        if outcome == "delivered":
            self._bump("delivered")
            self._finish(d)
        elif outcome == "retrying":
            self._bump("retried")
            delay = self._backoff(d.attempt, r.retry_after, jitter=True)
            d.attempt += 1
            d.due = self._clock() + delay
            d.seq = next(self._seq)
            self._persist(d, delay)
            self._schedule(d)
        else:
            self._bump("failed")
            self._finish(d)
            log.warning(
                "alert %s (%s) to %s failed after %d attempt(s): %s",
                d.alert_id,
                d.event,
                d.target.display_url,
                d.attempt,
                r.error,
            )

    def _backoff(self, attempt: int, retry_after: float | None = None, jitter: bool = False) -> float:
        return backoff(self.settings, attempt, retry_after, jitter)

    def _bump(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n
