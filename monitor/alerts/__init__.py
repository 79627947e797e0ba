"""Alerts that reach people: webhook delivery of the detector's alerts, with a delivery log.

The collector's ingest path hands changed alerts to an :class:`AlertDispatcher`, which turns
them into events (opened, escalated, resolved), sends a generic JSON or a Slack-compatible
body to every configured webhook from background threads, retries failures with exponential
backoff and records each attempt in the ``alert_deliveries`` table, readable at
``GET /api/v1/runs/{run_id}/alerts/{alert_id}/deliveries``. What it still owes is kept in the
``alert_outbox`` table, so a restarted collector resumes it.
"""

from monitor.alerts.dispatcher import AlertDispatcher
from monitor.alerts.events import classify_events
from monitor.alerts.log import DeliveryAttempt, DeliveryLog, MemoryDeliveryLog
from monitor.alerts.payload import build_payload, json_payload, slack_payload
from monitor.alerts.settings import WebhookSettings
from monitor.alerts.targets import WebhookTarget, parse_target, parse_url_list, redact_url

__all__ = [
    "AlertDispatcher",
    "DeliveryAttempt",
    "DeliveryLog",
    "MemoryDeliveryLog",
    "WebhookSettings",
    "WebhookTarget",
    "build_payload",
    "classify_events",
    "json_payload",
    "parse_target",
    "parse_url_list",
    "redact_url",
    "slack_payload",
]
