"""The webhook dispatcher against real HTTP receivers (no collector): payload formats, event
classification, retries with backoff visible in the delivery log, final 4xx, secrets kept out
of the log, and a hanging receiver that does not hold up the others."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from monitor.alerts import (
    AlertDispatcher,
    MemoryDeliveryLog,
    WebhookSettings,
    classify_events,
    parse_target,
    parse_url_list,
    redact_url,
)
from tests.monitor._alerts_receiver import Receiver

RUN = {"id": "run-a", "name": "baseline-lr0.03", "project": "default", "status": "running",
       "config": {"variant": "baseline", "lr": 0.03}}  # fmt: skip


def alert(aid=1, severity="warning", status="open", step=40, last_step=45, rule="norm_growth"):
    now = datetime.now(timezone.utc)
    return {
        "id": aid, "run_id": "run-a", "rule": rule, "severity": severity, "status": status,
        "step": step, "last_step": last_step, "message": "layer.1.fc2.l2_mean grew 12x in 20 steps",
        "evidence": {"key": "layer.1.fc2.l2_mean", "factor": 12.0}, "created_at": now, "updated_at": now,
    }  # fmt: skip


def settings(**kw) -> WebhookSettings:
    base = dict(webhook_backoff_s=0.05, webhook_backoff_max_s=0.5, webhook_timeout_s=2.0, webhook_workers=2)
    base.update(kw)
    return WebhookSettings(**base)


def test_json_and_slack_payloads_reach_real_receivers():
    with Receiver() as generic, Receiver() as slack:
        slack_entry = f'{{"url": "{slack.url}/services/T1/B2/secret", "format": "slack"}}'
        s = settings(
            webhook_urls=f'["{generic.url}/hook", {slack_entry}]', public_url="http://stabmon.example:8321"
        )
        with AlertDispatcher(s) as d:
            d.notify(RUN, [alert(severity="critical")])
            body = generic.wait_for(1)[0]["json"]
            msg = slack.wait_for(1)[0]["json"]
            assert d.wait_idle()

    assert body["version"] == 1 and body["event"] == "opened"
    assert body["alert"]["rule"] == "norm_growth" and body["alert"]["severity"] == "critical"
    assert body["alert"]["step"] == 40 and isinstance(body["alert"]["created_at"], str)
    assert body["run"] == {
        "id": "run-a", "name": "baseline-lr0.03", "project": "default", "status": "running",
        "variant": "baseline", "lr": 0.03, "config": {"variant": "baseline", "lr": 0.03},
    }  # fmt: skip
    assert body["links"]["run"] == "http://stabmon.example:8321/runs/run-a"
    assert body["links"]["deliveries_api"].endswith("/api/v1/runs/run-a/alerts/1/deliveries")
    assert "[CRITICAL] norm_growth opened on baseline-lr0.03 (baseline, lr=0.03) at step 40" in body["text"]

    assert set(msg) == {"text", "blocks"}
    assert msg["text"].startswith(":rotating_light: [CRITICAL] norm_growth")
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds[0] == "header" and "actions" in kinds and kinds[-1] == "context"
    button = next(b for b in msg["blocks"] if b["type"] == "actions")["elements"][0]
    assert button["url"] == "http://stabmon.example:8321/runs/run-a"


def test_events_open_escalate_resolve_and_no_spam_on_updates():
    seen: dict = {}
    assert [e for e, _ in classify_events([alert()], seen)] == ["opened"]
    assert classify_events([alert(last_step=60)], seen) == []  # only last_step moved
    assert [e for e, _ in classify_events([alert(severity="critical")], seen)] == ["escalated"]
    assert classify_events([alert(severity="critical", last_step=70)], seen) == []
    assert [e for e, _ in classify_events([alert(severity="critical", status="resolved")], seen)] == [
        "resolved"
    ]
    assert classify_events([alert(severity="critical", status="resolved")], seen) == []
    # Opened and resolved within one batch: the receiver hears both.
    assert [e for e, _ in classify_events([alert(aid=7, status="resolved")], {})] == ["opened", "resolved"]


def test_500_then_200_is_retried_with_backoff_and_logged():
    dlog = MemoryDeliveryLog()
    with Receiver(statuses=[500, 503, 200]) as rx, AlertDispatcher(settings(webhook_urls=rx.url), dlog) as d:
        d.notify(RUN, [alert()])
        reqs = rx.wait_for(3)
        assert d.wait_idle()
    assert len(reqs) == 3
    attempts = dlog.for_alert(1)
    assert [(a.attempt, a.status_code, a.outcome) for a in attempts] == [
        (1, 500, "retrying"),
        (2, 503, "retrying"),
        (3, 200, "delivered"),
    ]
    assert attempts[0].error == "receiver says no"
    # Exponential backoff: the second gap is about twice the first (0.05 s, then 0.1 s, +10% jitter).
    gaps = [
        (b.created_at - a.created_at).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)
    ]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1
    assert d.stats["delivered"] == 1 and d.stats["retried"] == 2


def test_client_error_is_final_and_max_attempts_bounds_retries():
    dlog = MemoryDeliveryLog()
    with Receiver(statuses=[404]) as gone, Receiver(statuses=[500]) as broken:
        s = settings(webhook_urls=f"{gone.url},{broken.url}", webhook_max_attempts=3)
        with AlertDispatcher(s, dlog) as d:
            d.notify(RUN, [alert()])
            broken.wait_for(3)
            assert d.wait_idle()
    by_code = {}
    for a in dlog.for_alert(1):
        by_code.setdefault(a.status_code, []).append(a.outcome)
    assert by_code[404] == ["failed"]  # a 4xx is the receiver saying no: not retried
    assert by_code[500] == ["retrying", "retrying", "failed"]
    assert len(broken.requests) == 3 and len(gone.requests) == 1


def test_connection_refused_is_retried_and_logged_without_secrets():
    dlog = MemoryDeliveryLog()
    with Receiver() as rx:
        port = rx.server.server_address[1]
    dead = f"http://user:pw@127.0.0.1:{port}/hooks/abc/s3cr3t?token=xyz"
    with AlertDispatcher(settings(webhook_urls=dead, webhook_max_attempts=2), dlog) as d:
        d.notify(RUN, [alert()])
        assert d.wait_idle()
    attempts = dlog.for_alert(1)
    assert [a.outcome for a in attempts] == ["retrying", "failed"]
    assert attempts[0].status_code is None and attempts[0].error.startswith("ConnectError")
    for a in attempts:
        assert a.url == f"http://127.0.0.1:{port}/hooks/***?***"
        assert "s3cr3t" not in repr(a) and "xyz" not in repr(a) and "pw" not in a.url


def test_delivered_events_are_not_sent_twice_after_a_restart():
    dlog = MemoryDeliveryLog()
    with Receiver() as rx:
        for _ in range(2):  # the second dispatcher is a restarted collector with the same log
            with AlertDispatcher(settings(webhook_urls=rx.url), dlog) as d:
                d.notify(RUN, [alert()])
                assert d.wait_idle()
        assert len(rx.requests) == 1
        assert d.stats["skipped_delivered"] == 1


def test_run_config_webhooks_and_min_severity():
    with Receiver() as mine, Receiver() as pager:
        hooks = [mine.url, {"url": pager.url, "min_severity": "critical"}, 42]
        run = dict(RUN, config={"variant": "baseline", "lr": 0.03, "webhooks": hooks})
        with AlertDispatcher(settings()) as d:
            d.notify(
                run, [alert(aid=1, severity="warning"), alert(aid=2, rule="logit_max", severity="critical")]
            )
            assert d.wait_idle()
    assert sorted(r["json"]["alert"]["id"] for r in mine.requests) == [1, 2]
    assert [r["json"]["alert"]["id"] for r in pager.requests] == [2]
    # The run's webhook URLs are secrets: receivers never see them in the payload.
    assert "webhooks" not in mine.requests[0]["json"]["run"]["config"]


def test_a_hanging_receiver_does_not_hold_up_the_others():
    with Receiver(hang=30) as stuck, Receiver() as fine:
        s = settings(webhook_urls=f"{stuck.url},{fine.url}", webhook_timeout_s=20)
        with AlertDispatcher(s) as d:
            t0 = time.monotonic()
            for i in range(1, 6):
                d.notify(RUN, [alert(aid=i)])
            notify_s = time.monotonic() - t0
            got = fine.wait_for(5, timeout=10)
            # Delivered to the healthy receiver while the stuck one still holds its request.
            assert len(got) == 5 and len(stuck.requests) >= 1
            assert notify_s < 1.0  # notify only queues (generous bound: it is microseconds)
            d.stop(timeout=0.2)


def test_queue_full_drops_and_counts_instead_of_blocking():
    d = AlertDispatcher(settings(webhook_queue_size=2))  # not started: nothing drains the queue
    for i in range(5):
        d.notify(RUN, [alert(aid=i)])
    assert d.stats["notified"] == 2 and d.stats["dropped"] == 3


def test_target_parsing_and_redaction():
    assert parse_target("https://hooks.slack.com/services/T/B/X").format == "slack"
    assert parse_target("slack+https://chat.example/hook").format == "slack"
    assert parse_target("https://example.com/h").format == "json"
    assert redact_url("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/services/***"
    assert redact_url("https://a:b@example.com:8443/x?k=v") == "https://example.com:8443/x?***"
    assert len(parse_url_list('["https://a.example/x", "https://b.example/y"]')) == 2
    assert parse_url_list("") == []
    with pytest.raises(ValueError, match="absolute http"):
        parse_target("ftp://example.com/x")
    with pytest.raises(ValueError, match="unknown webhook fields"):
        parse_target({"url": "https://a.example", "secret": 1})
    with pytest.raises(ValueError, match="does not parse"):
        WebhookSettings(webhook_urls="[not json")
