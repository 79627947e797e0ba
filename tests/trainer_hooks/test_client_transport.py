"""HTTP outcomes -> retry/reject/ok, Retry-After parsing, and the backoff schedule."""

import email.utils
import time

import httpx
import pytest

from trainer_hooks.client.transport import Backoff, Transport, classify


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "ok"), (201, "ok"), (400, "reject"), (401, "reject"), (404, "reject"), (413, "reject"),
     (422, "reject"), (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry")],
)  # fmt: skip
def test_classify(status, verdict):
    assert classify(status) == verdict


def _transport(handler):
    return Transport("http://collector:1/", "tok-123", transport=httpx.MockTransport(handler))


def test_requests_carry_token_and_exact_body():
    seen = []

    def handler(req):
        seen.append((req.method, req.url.path, req.headers["authorization"], req.content))
        return httpx.Response(200, json={"ok": 1})

    t = _transport(handler)
    r = t.post_points("run1", '{"batch_id":"b","points":[]}')
    assert r.verdict == "ok" and r.data == {"ok": 1}
    t.update_run("run1", {"status": "finished"})
    assert seen[0] == ("POST", "/api/v1/runs/run1/points", "Bearer tok-123", b'{"batch_id":"b","points":[]}')
    assert seen[1][:2] == ("PATCH", "/api/v1/runs/run1")


def test_error_detail_and_retry_after_seconds_and_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    answers = iter(
        [
            httpx.Response(503, json={"detail": "db down"}, headers={"Retry-After": "7"}),
            httpx.Response(429, text="slow", headers={"Retry-After": when}),
            httpx.Response(422, json={"detail": [{"loc": ["points"], "msg": "too many"}]}),
        ]
    )
    t = _transport(lambda req: next(answers))
    r1, r2, r3 = (t.register({"name": "x"}) for _ in range(3))
    assert (r1.verdict, r1.status, r1.detail, r1.retry_after) == ("retry", 503, "db down", 7.0)
    assert r2.verdict == "retry" and 25 < r2.retry_after <= 30 and r2.detail == "slow"
    assert r3.verdict == "reject" and "too many" in r3.detail and r3.retry_after is None


def test_connection_errors_are_retryable():
    def handler(req):
        raise httpx.ConnectError("refused", request=req)

    r = _transport(handler).register({"name": "x"})
    assert r.verdict == "retry" and r.status is None and "refused" in r.detail


def test_url_must_be_http():
    with pytest.raises(ValueError, match="http"):
        Transport("collector:8321", None)


def test_backoff_grows_with_jitter_caps_and_honours_retry_after():
    b = Backoff(initial=0.1, maximum=1.0, max_retry_after=5.0)
    delays = [b.next_delay() for _ in range(8)]
    for n, d in enumerate(delays):
        base = min(1.0, 0.1 * 2**n)
        assert 0.5 * base <= d <= base
    assert b.next_delay(retry_after=3.0) >= 3.0
    assert b.next_delay(retry_after=1e9) <= 5.0
    b.reset()
    assert b.next_delay() <= 0.1
    for _ in range(2000):  # no overflow after a very long outage
        b.next_delay()
    with pytest.raises(ValueError):
        Backoff(initial=0)
