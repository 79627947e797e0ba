"""The bodies stabmon POSTs to webhooks: a generic JSON document and a Slack message.

A notification is one *event* on one alert: ``opened`` (the detector's rule started to
fire), ``escalated`` (an open alert went from warning to critical) or ``resolved`` (the rule
stopped firing). Updates of an open alert that only move ``last_step`` are not events:
paging someone at every step of a growing norm would drown the signal.

The generic body (``format: json``) is versioned and self-contained, so a receiver (a
ticketing bridge, Alertmanager's webhook receiver, a training orchestrator) needs nothing
else: ``{"version": 1, "event", "text", "alert": AlertPublic, "run": {id, name, project,
status, variant, lr, config}, "links": {...}}``. The Slack body follows Slack's incoming
webhook format, ``{"text": <fallback>, "blocks": [...]}``, with the same facts laid out for
a channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

Event = Literal["opened", "escalated", "resolved"]
PAYLOAD_VERSION = 1

_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "resolved": ":white_check_mark:"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_label(run: Mapping[str, Any]) -> str:
    """``name (variant, lr=...)``: what a human recognises a run by."""
    cfg = run.get("config") or {}
    extras = [str(cfg["variant"])] if cfg.get("variant") is not None else []
    if cfg.get("lr") is not None:
        extras.append(f"lr={cfg['lr']:g}" if isinstance(cfg["lr"], (int, float)) else f"lr={cfg['lr']}")
    name = run.get("name") or run.get("id", "?")
    return f"{name} ({', '.join(extras)})" if extras else str(name)


def links(run: Mapping[str, Any], alert: Mapping[str, Any], public_url: str | None) -> dict[str, str]:
    """Where to look: the run's dashboard page and the alert in the API (when the collector's
    public URL is configured; a receiver cannot use a 127.0.0.1 link anyway)."""
    if not public_url:
        return {}
    base = public_url.rstrip("/")
    rid = run["id"]
    return {
        "run": f"{base}/runs/{rid}",
        "run_api": f"{base}/api/v1/runs/{rid}",
        "alerts_api": f"{base}/api/v1/runs/{rid}/alerts",
        "deliveries_api": f"{base}/api/v1/runs/{rid}/alerts/{alert['id']}/deliveries",
    }


def summary_text(event: Event, alert: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """One line: ``[CRITICAL] norm_growth opened on run-a (baseline, lr=0.03) at step 120: ...``."""
    sev = "RESOLVED" if event == "resolved" else str(alert["severity"]).upper()
    where = f"at step {alert['step']}" if event == "opened" else f"at step {alert['last_step']}"
    return f"[{sev}] {alert['rule']} {event} on {run_label(run)} {where}: {alert['message']}"


def json_payload(
    event: Event, alert: Mapping[str, Any], run: Mapping[str, Any], public_url: str | None = None
) -> dict[str, Any]:
    cfg = run.get("config") or {}
    return {
        "version": PAYLOAD_VERSION,
        "event": event,
        "text": summary_text(event, alert, run),
        "alert": _jsonable(dict(alert)),
        "run": {
            "id": run["id"],
            "name": run.get("name"),
            "project": run.get("project"),
            "status": run.get("status"),
            "variant": cfg.get("variant"),
            "lr": cfg.get("lr"),
            # Webhook URLs of the run are secrets: never echo them to (other) receivers.
            "config": _jsonable({k: v for k, v in cfg.items() if k != "webhooks"}),
        },
        "links": links(run, alert, public_url),
    }


def slack_payload(
    event: Event, alert: Mapping[str, Any], run: Mapping[str, Any], public_url: str | None = None
) -> dict[str, Any]:
    """Slack's incoming-webhook body: ``text`` is the notification fallback, ``blocks`` the layout."""
    emoji = _EMOJI["resolved" if event == "resolved" else str(alert["severity"])]
    text = f"{emoji} {summary_text(event, alert, run)}"
    fields = [
        {"type": "mrkdwn", "text": f"*Run*\n{run_label(run)}"},
        {"type": "mrkdwn", "text": f"*Rule*\n`{alert['rule']}`"},
        {"type": "mrkdwn", "text": f"*Severity*\n{alert['severity']}"},
        {"type": "mrkdwn", "text": f"*Steps*\n{alert['step']} - {alert['last_step']}"},
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"stabmon: {alert['rule']} {event}"[:150]},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {alert['message']}"[:3000]}},
        {"type": "section", "fields": fields},
    ]
    urls = links(run, alert, public_url)
    if "run" in urls:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": "Open run"}, "url": urls["run"]}
                ],
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"run `{run['id']}` · project {run.get('project') or '?'} · alert #{alert['id']}",
                }
            ],
        }
    )
    return {"text": text, "blocks": blocks}


def build_payload(
    fmt: str, event: Event, alert: Mapping[str, Any], run: Mapping[str, Any], public_url: str | None = None
) -> dict[str, Any]:
    if fmt == "slack":
        return slack_payload(event, alert, run, public_url)
    return json_payload(event, alert, run, public_url)
