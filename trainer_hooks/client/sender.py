"""Delivery: the client's sender thread, which moves the spool's batches to the collector.

:class:`Sender` registers the run (``POST /api/v1/runs`` with the client-chosen id, retried
until the collector answers, so a collector that is down at start delays nothing), then posts
what the spool holds, from its head and in order, acknowledging each batch or status update on
2xx. Retryable failures (408/429/5xx/connection errors/timeouts) back off exponentially with
jitter and honour ``Retry-After``; a 413 splits the batch and shrinks later ones; a 404 (the
collector forgot the run) registers again and resends once; any other 4xx moves the batch to
the rejected file, logged and counted. Alerts in ingest answers go to the client's
:class:`~trainer_hooks.client.alerts.AlertTracker` before the batch is acknowledged.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from trainer_hooks.client.alerts import AlertTracker
from trainer_hooks.client.batching import Batcher
from trainer_hooks.client.config import ClientConfig
from trainer_hooks.client.spool import Pending, Spool
from trainer_hooks.client.transport import Backoff, Reply, Transport

log = logging.getLogger("stabmon.client")


class Sender:
    """The sender thread of one :class:`~trainer_hooks.client.Client`; see the module docstring.

    It shares with the client: the spool (it reads and acknowledges the head), the batcher (a
    413 lowers its ``max_body_bytes``), the stats ``counters``, the ``progress`` condition
    (notified after every answer handled, for ``flush``) and ``on_error`` (records the last
    error and logs it)."""

    def __init__(
        self,
        *,
        run_id: str,
        run_create: dict[str, Any],
        transport: Transport,
        spool: Spool,
        batcher: Batcher,
        alerts: AlertTracker,
        config: ClientConfig,
        counters: collections.Counter,
        progress: threading.Condition,
        on_error: Callable[..., None],
    ) -> None:
        self.run_id = run_id
        self._run_create = run_create
        self._transport = transport
        self._spool = spool
        self._batcher = batcher
        self._alerts = alerts
        self.config = config
        self._c = counters
        self._progress = progress
        self._error = on_error
        self.registered = False
        self.fatal: str | None = None
        """Why delivery gave up for good (registration refused); None while it goes on."""
        self._reregistered_for: str | None = None
        self._work = threading.Event()  # the batcher appended something: wake the sender
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send_loop, name="stabmon-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Something new is in the spool: stop waiting for work."""
        self._work.set()

    def stop(self, deadline: float) -> None:
        """Ask the thread to end and wait for it until ``deadline`` (at least 0.1 s)."""
        self._stop.set()
        self._work.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _send_loop(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s, cfg.max_retry_after_s)
        failing = False
        while not self._stop.is_set() and not self.fatal:
            try:
                if not self.registered:
                    reply = self._transport.register(self._run_create)
                    if reply.verdict == "ok":
                        self.registered = True
                        log.info("stabmon client: run %s registered", self.run_id)
                    elif reply.verdict == "reject":
                        # A bad token or run description: resending cannot help. Points stay
                        # in the spool (bounded) so a corrected client can deliver them.
                        self.fatal = f"registration refused with HTTP {reply.status}: {reply.detail}"
                        self._error(self.fatal + f"; points stay in {self._spool.path}", logging.ERROR)
                        return
                else:
                    head = self._spool.peek()
                    if head is None:
                        self._work.wait(self.config.poll_interval_s)
                        self._work.clear()
                        continue
                    reply = self._send(head, first_try=not failing)
            except Exception as e:  # a bug must not kill delivery for the rest of the run
                reply = Reply("retry", None, detail=f"{type(e).__name__}: {e}")
                log.exception("stabmon client: unexpected error in the sender")
            if reply.verdict == "retry":
                self._c["retries"] += 1
                if not failing:
                    why = f"{reply.status or 'no answer'}: {reply.detail}"
                    self._error(f"collector unavailable ({why}); retrying")
                failing = True
                self._stop.wait(backoff.next_delay(reply.retry_after))
                continue
            if failing:
                log.info("stabmon client: collector reachable again after %d attempts", backoff.attempt)
            failing = False
            backoff.reset()
            with self._progress:
                self._progress.notify_all()

    def _send(self, head: Pending, first_try: bool) -> Reply:
        batch_id, body, n_points, kind = head
        if kind == "update":
            reply = self._transport.update_run(self.run_id, body)
            if reply.verdict == "ok":
                self._spool.ack(batch_id)
                return reply
            return self._refused(head, reply)
        if first_try:
            self._c["points_sent"] += n_points
        reply = self._transport.post_points(self.run_id, body)
        if reply.verdict == "ok":
            data = reply.data if isinstance(reply.data, dict) else {}
            self._c["batches_acked"] += 1
            self._c["points_acked"] += n_points
            if data.get("duplicate"):
                self._c["duplicates"] += 1
            # Alerts and counters before the ack: once flush() returns, the answers to what it
            # waited for have been fully handled (on_alert called, stats updated).
            self._alerts.update(data.get("alerts"))
            self._spool.ack(batch_id)
            return reply
        return self._refused(head, reply)

    def _refused(self, head: Pending, reply: Reply) -> Reply:
        """A batch or update the collector did not take: split, re-register, or set aside."""
        batch_id, body, n_points, kind = head
        if reply.verdict == "reject":
            if reply.status == 413 and self._spool.split(batch_id):
                # The collector's body limit is below ours: resend in halves, and make new
                # batches smaller from now on.
                self._batcher.max_body_bytes = max(4096, min(self._batcher.max_body_bytes, len(body) // 2))
                log.warning(
                    "stabmon client: collector refused a %d-byte batch as too large; splitting it and "
                    "lowering max_body_bytes to %d",
                    len(body),
                    self._batcher.max_body_bytes,
                )
                return Reply("ok", 413)
            if reply.status == 404 and self._reregistered_for != batch_id:
                # The collector does not know the run (its database was reset): register again
                # and resend once before calling the batch bad.
                self._reregistered_for = batch_id
                self.registered = False
                return Reply("ok", 404)
            if kind == "points":
                self._c["rejected_batches"] += 1
                self._c["rejected_points"] += n_points
                what = f"batch {batch_id} ({n_points} points)"
            else:
                what = "the run's status update"
            self._error(
                f"collector rejected {what} with HTTP {reply.status}: {reply.detail}; "
                f"kept in {self._spool.rejected_path}",
                logging.ERROR,
            )
            self._spool.reject(batch_id, body, reply.status, reply.detail)
        return reply
