"""HTTP to the collector: the three calls the client makes, and what each answer means.

:class:`Transport` wraps one keep-alive ``httpx.Client`` (used only by the client's sender
thread) and turns every outcome into a :class:`Reply` with a verdict: ``ok`` (2xx, durably
committed), ``retry`` (408, 429, 5xx, connection errors and timeouts: try again after a
backoff, honouring ``Retry-After``) or ``reject`` (any other 4xx: the request itself is
bad and resending it cannot help). :class:`Backoff` computes exponential delays with jitter.
The bearer token is sent in a header and never logged or put in an error message.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from stabmon import __version__

Verdict = Literal["ok", "retry", "reject"]


@dataclass
class Reply:
    verdict: Verdict
    status: int | None = None
    """HTTP status, or None when no answer came (connection refused, timeout)."""
    data: Any = None
    """The decoded JSON body of a 2xx answer (None if it was not JSON)."""
    detail: str = ""
    """Why it failed: the collector's ``detail`` or the connection error."""
    retry_after: float | None = None


def _detail(resp: httpx.Response) -> str:
    try:
        d = resp.json().get("detail", resp.text)
    except (ValueError, AttributeError):
        d = resp.text
    text = d if isinstance(d, str) else json.dumps(d)
    return text[:500]


def _retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    v = resp.headers.get("retry-after")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(v)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "reject"


class Transport:
    """The collector's ingest API over one keep-alive connection pool."""

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"collector url must start with http:// or https://, got {url!r}")
        headers = {"User-Agent": f"stabmon-client/{__version__}", "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base = url.rstrip("/")
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            transport=transport,
        )

    def _call(self, method: str, path: str, content: bytes) -> Reply:
        try:
            resp = self._http.request(method, self.base + path, content=content)
        except httpx.HTTPError as e:
            # Connection refused/reset, DNS, timeouts: the collector may come back.
            return Reply("retry", None, detail=f"{type(e).__name__}: {e}")
        verdict = classify(resp.status_code)
        if verdict == "ok":
            try:
                data = resp.json()
            except ValueError:
                data = None
            return Reply("ok", resp.status_code, data=data)
        return Reply(verdict, resp.status_code, detail=_detail(resp), retry_after=_retry_after(resp))

    def register(self, payload: dict[str, Any]) -> Reply:
        """``POST /api/v1/runs`` (idempotent thanks to the client-chosen run id)."""
        return self._call("POST", "/api/v1/runs", json.dumps(payload, allow_nan=False).encode())

    def post_points(self, run_id: str, body: str) -> Reply:
        """``POST /api/v1/runs/{run_id}/points`` with an already-encoded ``PointsIn`` body."""
        return self._call("POST", f"/api/v1/runs/{run_id}/points", body.encode())

    def update_run(self, run_id: str, payload: dict[str, Any] | str) -> Reply:
        """``PATCH /api/v1/runs/{run_id}`` with a ``RunUpdate`` (a dict, or its encoded JSON)."""
        body = payload if isinstance(payload, str) else json.dumps(payload, allow_nan=False)
        return self._call("PATCH", f"/api/v1/runs/{run_id}", body.encode())

    def close(self) -> None:
        self._http.close()


class Backoff:
    """Exponential backoff with jitter: ``initial * 2**n``, capped, times U(0.5, 1)."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0, max_retry_after: float = 300.0) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial ({initial}) <= maximum ({maximum})")
        self.initial, self.maximum, self.max_retry_after = initial, maximum, max_retry_after
        self.attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        base = min(self.maximum, self.initial * 2 ** min(self.attempt, 40))
        self.attempt += 1
        delay = base * random.uniform(0.5, 1.0)
        if retry_after is not None:
            # The server knows its load better than we do, but a huge value must not stall us.
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay

    def reset(self) -> None:
        self.attempt = 0
