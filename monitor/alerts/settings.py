"""Settings of alert delivery: the webhook fields of the collector's one
:class:`~monitor.settings.Settings` (which inherits them, so they read ``STABMON_WEBHOOK_URLS``,
``STABMON_PUBLIC_URL``, ... with the rest). A plain model here, so the dispatcher can be built
and tested without the whole collector configuration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitor.alerts.targets import WebhookTarget, parse_url_list


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    webhook_urls: str | None = None
    """Targets notified for every run: a JSON list (URL strings or ``{"url", "format",
    "min_severity"}`` mappings) or comma-separated URLs. A run adds its own in ``config.webhooks``."""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    """Per-request timeout (connect and each read). A hanging receiver costs one sender
    thread this long per attempt, never the ingest path."""
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    """Attempts per (alert event, target), the first included."""
    webhook_backoff_s: float = Field(default=1.0, ge=0)
    """Delay before the first retry; doubled on each further retry (plus up to 10% jitter)."""
    webhook_backoff_max_s: float = Field(default=300.0, ge=0)
    """Cap on one retry delay, ``Retry-After`` included."""
    webhook_workers: int = Field(default=4, ge=1, le=64)
    """Sender threads: this many receivers may hang at once before the others wait."""
    webhook_queue_size: int = Field(default=10_000, ge=1)
    """Pending notifications kept in memory; past it new ones are dropped and counted."""
    public_url: str | None = None
    """The collector's address as a receiver can reach it (e.g. ``https://stabmon.example``),
    used for links in payloads. Unset: payloads carry no links."""

    @field_validator("webhook_urls")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        parse_url_list(v)  # raise at start-up, with the reason, rather than at the first alert
        return v

    def global_targets(self) -> list[WebhookTarget]:
        return parse_url_list(self.webhook_urls)
