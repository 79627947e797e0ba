"""The dispatcher's side of the webhook outbox: resuming what a previous dispatcher still owed,
and keeping each delivery's row current as it is attempted, retried and ended.

A mixin of :class:`~monitor.alerts.dispatcher.AlertDispatcher` (it uses the dispatcher's
outbox, delivery log, targets, clock and scheduling); kept apart because it is the one part of
the dispatcher that is about surviving restarts rather than sending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from monitor.alerts.delivery import Delivery
from monitor.alerts.log import utcnow
from monitor.alerts.outbox import reconcile
from monitor.alerts.targets import merge_targets, run_targets

log = logging.getLogger("stabmon.alerts")


class OutboxSync:
    def _resume(self) -> None:
        """Schedule what the outbox holds (a previous dispatcher's unfinished deliveries),
        each at its stored due time, and take them over from whoever scheduled them."""
        try:
            owed = self.outbox.claim(self.owner)
        except Exception:
            self._bump("outbox_errors")
            log.exception("alert dispatcher: could not read the outbox; pending deliveries wait")
            return
        now_wall, now, resumed = utcnow(), self._clock(), 0
        for p in owed:
            own, _ = run_targets(p.run_config)
            target = next(
                (t for t in merge_targets(self._global_targets, own) if t.target_id == p.target_id), None
            )
            if target is None:
                # The webhook was removed from the settings since: nobody to deliver to.
                self._bump("orphaned")
                log.warning(
                    "alert %s (%s): webhook %s is no longer configured; dropping its delivery",
                    p.alert_id,
                    p.event,
                    p.target_id,
                )
                self._outbox_call(self.outbox.remove, p.key)
                continue
            tried = [a for a in self.log.for_alert(p.alert_id) if (a.event, a.target_id) == p.key[1:]]
            now_p = reconcile(p, tried, self._backoff)
            if now_p is None:  # it ended just before a crash that left its row behind
                self._bump("skipped_delivered" if tried[-1].outcome == "delivered" else "failed")
                self._outbox_call(self.outbox.remove, p.key)
                continue
            wait = max(0.0, (now_p.due_at - now_wall).total_seconds())
            resumed += self._schedule(
                new=True,
                d=Delivery(
                    due=now + wait,
                    seq=next(self._seq),
                    target=target,
                    event=now_p.event,
                    alert_id=now_p.alert_id,
                    run_id=now_p.run_id,
                    payload=now_p.payload,
                    attempt=now_p.attempt,
                    run_config=now_p.run_config,
                ),
            )
        if resumed:
            self._bump("resumed", resumed)
            log.info("alert dispatcher: resumed %d webhook deliveries from the outbox", resumed)

    def _persist(self, d: Delivery, delay: float) -> None:
        """Record (or update) ``d`` in the outbox, its next attempt due in ``delay`` seconds.
        Sets ``d.persisted``: an attempt the outbox does not hold is sent without asking it."""
        pending = d.pending(utcnow() + timedelta(seconds=delay))
        # put() returns None; the default, False, says it raised.
        d.persisted = self._outbox_call(self.outbox.put, pending, self.owner, default=False) is not False

    def _finish(self, d: Delivery) -> None:
        self._outbox_call(self.outbox.remove, d.key)
        with self._cond:
            self._pending.discard(d.key)

    def _outbox_call(self, fn: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """An outbox that fails (database away) must not stop delivery: what is in memory is
        still sent; only its survival across a restart is at risk, and that is logged."""
        try:
            return fn(*args)
        except Exception as e:
            self._bump("outbox_errors")
            log.warning("alert dispatcher: outbox %s failed: %s: %s", fn.__name__, type(e).__name__, e)
            return default
