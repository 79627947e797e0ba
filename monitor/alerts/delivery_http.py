"""One webhook POST and the retry policy around it, apart from the dispatcher's threads.

:func:`post_once` sends a payload and reports what happened without raising (a connection
error or a timeout is a result, not an exception); :func:`is_retryable` and :func:`backoff`
say whether and when to try again: 408/429/5xx, connection errors and timeouts are retried
after ``webhook_backoff_s * 2**(attempt-1)`` seconds (+ up to 10% jitter, ``Retry-After``
honoured, capped at ``webhook_backoff_max_s``); any other 4xx is final.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from monitor.alerts.settings import WebhookSettings
from monitor.alerts.targets import redact_url

MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class PostResult:
    status: int | None
    """HTTP status; None when no response came (connection error, timeout)."""
    error: str | None
    """The receiver's answer to a non-2xx (truncated), or the error's class and redacted text."""
    retry_after: float | None
    """Seconds from a ``Retry-After`` header, when the receiver sent one."""
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post_once(http: httpx.Client, url: str, payload: dict[str, Any]) -> PostResult:
    t0 = time.monotonic()
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    try:
        resp = http.post(url, json=payload)
        status = resp.status_code
        if not 200 <= status < 300:
            error = (resp.text or resp.reason_phrase or "")[:MAX_ERROR_CHARS] or f"HTTP {status}"
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    except httpx.HTTPError as e:
        # The exception text can contain the URL; keep only its class and a redacted hint.
        error = f"{type(e).__name__}: {str(e).replace(url, redact_url(url))}"[:MAX_ERROR_CHARS]
    return PostResult(status, error, retry_after, (time.monotonic() - t0) * 1000.0)


def is_retryable(status: int | None) -> bool:
    """Connection errors/timeouts (no status), 408, 429 and 5xx are worth another try."""
    return status is None or status in (408, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for webhooks; the exponential backoff applies


def backoff(
    settings: WebhookSettings, attempt: int, retry_after: float | None = None, jitter: bool = False
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (jitter only lengthens it)."""
    delay = settings.webhook_backoff_s * (2 ** (attempt - 1))
    if jitter:
        delay *= 1.0 + 0.1 * random.random()
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.webhook_backoff_max_s)
