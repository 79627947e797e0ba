"""The webhook outbox: a retry pending when a dispatcher stops is resumed by the next one with
its attempt number, backoff and payload, against real HTTP receivers; it is not planned twice,
not sent by a dispatcher a restarted one took it over from, and dropped when its webhook is no
longer configured. The dispatchers that must leave a retry pending run on a clock that never
advances, so nothing here depends on how fast the machine is. Also the SQL outbox on SQLite
and PostgreSQL, and :func:`reconcile` (an outbox row one attempt behind the log after a crash).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from monitor.alerts import AlertDispatcher, DeliveryAttempt, MemoryDeliveryLog, WebhookSettings
from monitor.alerts.outbox import MemoryOutbox, PendingDelivery, reconcile
from tests._collector import wait_until
from tests.monitor._alerts_receiver import Receiver
from tests.monitor.conftest import make_api

RUN = {"id": "run-a", "name": "baseline-lr0.03", "project": "default", "status": "running",
       "config": {"variant": "baseline", "lr": 0.03}}  # fmt: skip
BACKOFF_S = 0.3


def alert(aid: int = 1) -> dict:
    now = datetime.now(timezone.utc)
    return {
        "id": aid, "run_id": "run-a", "rule": "non_finite", "severity": "critical", "status": "open",
        "step": 40, "last_step": 40, "message": "loss is nan", "evidence": {}, "created_at": now,
        "updated_at": now,
    }  # fmt: skip


def settings(urls: str) -> WebhookSettings:
    return WebhookSettings(
        webhook_urls=urls, webhook_backoff_s=BACKOFF_S, webhook_timeout_s=5.0, webhook_workers=2
    )


class FrozenClock:
    """Monotonic time that moves only when told: a retry is due only after ``advance``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def leave_a_retry_pending(
    rx: Receiver, dlog: MemoryDeliveryLog, outbox: MemoryOutbox, clock: FrozenClock | None = None
) -> AlertDispatcher:
    """A dispatcher whose first attempt failed and whose retry is not due (its clock stands)."""
    first = AlertDispatcher(settings(rx.url + "/hook"), dlog, outbox=outbox, clock=clock or FrozenClock())
    first.start()
    first.notify(RUN, [alert()])
    assert wait_until(lambda: len(dlog.for_alert(1)) == 1, timeout=10)
    assert first.wait_idle(due_only=True)
    return first


def test_a_retry_pending_at_stop_is_resumed_with_its_attempt_backoff_and_payload():
    dlog, outbox = MemoryDeliveryLog(), MemoryOutbox()
    with Receiver(statuses=[500, 200]) as rx:
        first = leave_a_retry_pending(rx, dlog, outbox)
        first.stop(timeout=1)
        assert first.stats["abandoned"] == 1 and len(rx.requests) == 1
        (owed,) = outbox.claim("inspector")
        assert owed.attempt == 2 and owed.event == "opened"
        assert owed.due_at >= dlog.for_alert(1)[0].created_at + timedelta(seconds=BACKOFF_S)

        with AlertDispatcher(settings(rx.url + "/hook"), dlog, outbox=outbox) as second:
            assert wait_until(lambda: len(rx.requests) == 2, timeout=10)
            assert second.wait_idle()
            assert second.stats["resumed"] == 1 and second.stats["delivered"] == 1
    attempts = dlog.for_alert(1)
    assert [(a.attempt, a.status_code, a.outcome) for a in attempts] == [
        (1, 500, "retrying"),
        (2, 200, "delivered"),
    ]
    assert attempts[1].created_at - attempts[0].created_at >= timedelta(seconds=BACKOFF_S)
    assert rx.requests[1]["json"] == rx.requests[0]["json"] and rx.requests[1]["json"]["event"] == "opened"
    assert len(outbox) == 0


def test_a_resumed_delivery_is_not_planned_again_when_the_alert_is_reported_again():
    dlog, outbox = MemoryDeliveryLog(), MemoryOutbox()
    with Receiver(statuses=[500, 200]) as rx:
        leave_a_retry_pending(rx, dlog, outbox).stop(timeout=1)
        with AlertDispatcher(settings(rx.url + "/hook"), dlog, outbox=outbox) as second:
            # The next batch after a restart reports the alert again; the new dispatcher has
            # never seen it, so it looks opened, but its delivery is already owed.
            second.notify(RUN, [alert()])
            assert wait_until(lambda: second.stats["delivered"] == 1, timeout=10)
            assert second.wait_idle()
            assert second.stats["skipped_pending"] + second.stats["skipped_delivered"] == 1
        assert len(rx.requests) == 2


def test_a_dispatcher_does_not_send_what_a_restarted_one_took_over():
    dlog, outbox = MemoryDeliveryLog(), MemoryOutbox()
    with Receiver(statuses=[500, 200]) as rx:
        clock = FrozenClock()
        first = leave_a_retry_pending(rx, dlog, outbox, clock)  # still running: a replica lives on
        with AlertDispatcher(settings(rx.url + "/hook"), dlog, outbox=outbox) as second:
            assert wait_until(lambda: second.stats["delivered"] == 1, timeout=10)
        clock.advance(3600)  # its copy of the retry is due now
        assert wait_until(lambda: first.stats["taken_over"] == 1, timeout=10)
        first.stop(timeout=1)
        assert len(rx.requests) == 2 and first.stats["attempts"] == 1


def test_a_delivery_whose_webhook_was_removed_is_dropped_on_resume():
    dlog, outbox = MemoryDeliveryLog(), MemoryOutbox()
    with Receiver(statuses=[500, 200]) as rx, Receiver() as other:
        leave_a_retry_pending(rx, dlog, outbox).stop(timeout=1)
        with AlertDispatcher(settings(other.url + "/hook"), dlog, outbox=outbox) as second:
            assert wait_until(lambda: second.stats["orphaned"] == 1, timeout=10)
            assert second.wait_idle()
        assert len(rx.requests) == 1 and other.requests == [] and len(outbox) == 0


class BrokenOutbox(MemoryOutbox):
    """An outbox whose database is away: every write fails."""

    def put(self, delivery: PendingDelivery, owner: str) -> None:
        raise OSError("database unavailable")


def test_an_outbox_that_fails_does_not_stop_delivery():
    dlog = MemoryDeliveryLog()
    rx = Receiver(statuses=[500, 200])
    with rx, AlertDispatcher(settings(rx.url + "/hook"), dlog, outbox=BrokenOutbox()) as d:
        d.notify(RUN, [alert()])
        assert wait_until(lambda: d.stats["delivered"] == 1, timeout=10)
        assert d.stats["outbox_errors"] == 2 and d.stats["taken_over"] == 0
    assert [(a.attempt, a.outcome) for a in dlog.for_alert(1)] == [(1, "retrying"), (2, "delivered")]


def _pending(attempt: int = 2, due_in: float = 0.3) -> PendingDelivery:
    now = datetime.now(timezone.utc)
    return PendingDelivery(1, "run-a", "opened", "abc", attempt, now + timedelta(seconds=due_in), {"x": 1})


def _tried(*outcomes: str) -> list[DeliveryAttempt]:
    t0 = datetime.now(timezone.utc)
    return [
        DeliveryAttempt(1, "run-a", "opened", "abc", "http://h/***", "json", i + 1, o, created_at=t0)
        for i, o in enumerate(outcomes)
    ]


def test_reconcile_trusts_the_log_when_a_crash_left_the_outbox_behind():
    p = _pending(attempt=2)
    assert reconcile(p, [], lambda n: 1.0) is p
    assert reconcile(p, _tried("retrying"), lambda n: 1.0) is p  # in step: attempt 1 logged, 2 owed
    assert reconcile(p, _tried("retrying", "delivered"), lambda n: 1.0) is None
    assert reconcile(p, _tried("retrying", "failed"), lambda n: 1.0) is None
    tried = _tried("retrying", "retrying")  # attempt 2 was logged, the outbox not yet updated
    behind = reconcile(p, tried, lambda n: 10.0 * n)
    assert behind.attempt == 3 and behind.due_at == tried[-1].created_at + timedelta(seconds=20.0)


def test_sql_outbox_put_claim_owns_remove(store):
    api = make_api(store)
    api.create_run("r1")
    api.post_points("r1", "b1", [{"step": s, "values": {"loss": 2.0}} for s in range(5)])
    answer = api.post_points("r1", "b2", [{"step": 5, "values": {"loss": "nan"}}]).json()
    alert_id = answer["alerts"][0]["id"]
    box = store.outbox
    due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=30)
    p = PendingDelivery(alert_id, "r1", "opened", "t1", 1, due, {"event": "opened", "nested": {"k": [1, 2]}})
    box.put(p, "a")
    box.put(PendingDelivery(alert_id, "r1", "opened", "t1", 3, due, p.payload), "a")  # a retry: replaced
    assert len(box) == 1 and box.owns(p.key, "a") and not box.owns(p.key, "b")
    (got,) = box.claim("b")
    assert (got.attempt, got.due_at, got.payload, got.run_id) == (3, due, p.payload, "r1")
    assert got.run_config == {}  # the run's stored config: where its own webhooks would be
    assert box.owns(p.key, "b") and not box.owns(p.key, "a")
    box.remove(p.key)
    assert len(box) == 0 and box.claim("c") == [] and not box.owns(p.key, "b")
