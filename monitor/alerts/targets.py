"""Webhook targets: where alert notifications go, parsed from settings and run configs.

A target is a URL plus a payload format. Targets come from two places, merged and
de-duplicated per run: the collector-wide ``STABMON_WEBHOOK_URLS`` (every run of every
project) and a run's own ``config["webhooks"]`` (that run only), so a user can page their
team for one long run without reconfiguring the service. Each entry is a URL string or a
mapping ``{"url": ..., "format": "json" | "slack", "min_severity": "warning" | "critical"}``.
A string URL picks the Slack format when it points at ``hooks.slack.com`` or is written
``slack+https://...``; otherwise the generic JSON format. Webhook URLs usually embed their
secret (Slack's path, a ``?token=`` query, ``user:pass@``), so anything stored or shown uses
:func:`redact_url`, and a short fingerprint of the full URL tells two targets apart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from stabmon.wire import SEVERITY_RANK

PayloadFormat = Literal["json", "slack"]
FORMATS: tuple[str, ...] = ("json", "slack")
SLACK_PREFIX = "slack+"


@dataclass(frozen=True)
class WebhookTarget:
    """One destination: the real URL (secret included, never logged), its format and the
    lowest severity it wants to hear about."""

    url: str
    format: PayloadFormat = "json"
    min_severity: str = "warning"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be an absolute http(s) URL, got {redact_url(self.url)!r}")
        if self.format not in FORMATS:
            raise ValueError(f"webhook format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.min_severity not in SEVERITY_RANK:
            raise ValueError(
                f"webhook min_severity must be one of {', '.join(SEVERITY_RANK)}, got {self.min_severity!r}"
            )

    @property
    def target_id(self) -> str:
        """A stable 12-hex fingerprint of the full URL: distinguishes targets without showing them."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:12]

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    def wants(self, severity: str) -> bool:
        return SEVERITY_RANK.get(severity, 0) >= SEVERITY_RANK[self.min_severity]


def redact_url(url: str) -> str:
    """``scheme://host[:port]/first-segment/***``: no credentials, no query, no path secrets.

    Only the first path segment survives (``/services``, ``/hooks``, ``/api``): enough to
    recognise the endpoint, while tokens that services put deeper in the path or in the
    query never reach the delivery log, the API or the logs.
    """
    if url.startswith(SLACK_PREFIX):
        url = url[len(SLACK_PREFIX) :]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    netloc = f"{host}:{port}" if port else host
    segments = [s for s in parts.path.split("/") if s]
    path = ""
    if segments:
        path = "/" + segments[0]
        if len(segments) > 1:
            path += "/***"
    if parts.query:
        path += "?***"
    return f"{parts.scheme}://{netloc}{path}"


def _detect_format(url: str) -> tuple[str, PayloadFormat]:
    if url.startswith(SLACK_PREFIX):
        return url[len(SLACK_PREFIX) :], "slack"
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    return url, ("slack" if host == "hooks.slack.com" else "json")


def parse_target(entry: str | Mapping[str, Any]) -> WebhookTarget:
    """One configuration entry (a URL string or a mapping) as a target; ValueError if malformed."""
    if isinstance(entry, str):
        url, fmt = _detect_format(entry.strip())
        return WebhookTarget(url=url, format=fmt)
    if isinstance(entry, Mapping):
        unknown = set(entry) - {"url", "format", "min_severity"}
        if unknown:
            raise ValueError(f"unknown webhook fields: {', '.join(sorted(unknown))}")
        if not isinstance(entry.get("url"), str):
            raise ValueError("a webhook mapping needs a string 'url'")
        url, fmt = _detect_format(entry["url"].strip())
        return WebhookTarget(
            url=url,
            format=entry.get("format", fmt),
            min_severity=entry.get("min_severity", "warning"),
        )
    raise ValueError(f"a webhook is a URL string or a mapping with 'url', got {type(entry).__name__}")


def parse_url_list(raw: str | None) -> list[WebhookTarget]:
    """``STABMON_WEBHOOK_URLS``: a JSON list (of strings or mappings) or comma-separated URLs."""
    if raw is None or not raw.strip():
        return []
    text = raw.strip()
    entries: Iterable[Any]
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"STABMON_WEBHOOK_URLS looks like JSON but does not parse: {e}") from None
    else:
        entries = [u for u in text.split(",") if u.strip()]
    return [parse_target(e) for e in entries]


def run_targets(run_config: Mapping[str, Any] | None) -> tuple[list[WebhookTarget], list[str]]:
    """The targets a run asked for in ``config["webhooks"]``, and a message per bad entry.

    A bad entry in a run's config must not stop alerts from reaching the other targets, so
    errors are returned (and logged by the caller) instead of raised.
    """
    raw = (run_config or {}).get("webhooks")
    if raw is None:
        return [], []
    if isinstance(raw, (str, Mapping)):
        raw = [raw]
    if not isinstance(raw, list):
        return [], [f"config.webhooks must be a list, got {type(raw).__name__}"]
    targets: list[WebhookTarget] = []
    errors: list[str] = []
    for i, entry in enumerate(raw):
        try:
            targets.append(parse_target(entry))
        except ValueError as e:
            errors.append(f"config.webhooks[{i}]: {e}")
    return targets, errors


def merge_targets(*groups: Iterable[WebhookTarget]) -> list[WebhookTarget]:
    """All targets in order, each (url, format) once: a URL in both places is notified once."""
    seen: set[tuple[str, str]] = set()
    out: list[WebhookTarget] = []
    for group in groups:
        for t in group:
            if (t.url, t.format) not in seen:
                seen.add((t.url, t.format))
                out.append(t)
    return out
