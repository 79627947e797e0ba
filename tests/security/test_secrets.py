"""Secrets stay out of logs, and the collector will not listen publicly without auth.

A real collector (``stabmon serve``, access log on) and a real client run with a token; the
token is also used the ways a browser uses it (``/?token=`` sign-in link, the login form), a
webhook URL carrying a secret fails to deliver, and a revoked token is tried. Everything the
collector printed and everything the client logged (all loggers, DEBUG) is then searched for
the token and the webhook secret.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import httpx
import pytest

from monitor.server import BindRefused, prepare
from monitor.settings import Settings
from monitor.store import Store, migrate
from tests._collector import Collector, wait_until
from trainer_hooks.client import Client, RunInfo

HOOK_SECRET = "hooksecret9f8e7d"


@pytest.mark.integration
@pytest.mark.slow
def test_tokens_and_webhook_secrets_never_reach_the_logs(tmp_path, caplog):
    db = f"sqlite:///{tmp_path / 'stabmon.db'}"
    migrate.upgrade(db)
    store = Store(db, pool_size=1)
    token, _ = store.create_token("secrets", label="test")
    revoked, _ = store.create_token("secrets", label="old")
    store.revoke_token(revoked)
    store.dispose()
    col = Collector(
        db, workdir=tmp_path, env={"STABMON_WEBHOOK_BACKOFF_S": "0.05", "STABMON_WEBHOOK_MAX_ATTEMPTS": "2"}
    )
    col.start()
    caplog.set_level(logging.DEBUG)
    try:
        hook = f"http://user:{HOOK_SECRET}@127.0.0.1:9/hooks/{HOOK_SECRET}?key={HOOK_SECRET}"
        c = Client(
            col.url,
            token=token,
            run=RunInfo(name="s", id="secrets-run", config={"webhooks": [hook]}),
            spool_dir=tmp_path / "spool",
            flush_interval_s=0.05,
        )
        for s in range(30):
            c.write({"step": s, "rank": 0, "values": {"loss": float("nan") if s == 25 else 2.0}})
        assert c.flush(60), c.stats
        c.close()
        assert c.alerts or c.stats.batches_acked > 0
        # The alert's webhook fails (nothing listens on port 9): wait for its final attempt.
        h = {"Authorization": f"Bearer {token}"}

        def failed() -> bool:
            d = httpx.get(f"{col.url}/api/v1/runs/secrets-run/deliveries", headers=h, timeout=10).json()
            return any(x["outcome"] == "failed" for x in d)

        assert wait_until(failed, timeout=60)
        # Everything the training side logged (the client's threads, httpx, httpcore at DEBUG);
        # what this test itself does as a browser below is not the client's.
        client_log = "\n".join(r.getMessage() for r in caplog.records)
        assert "stabmon client" in client_log
        # Browser-style uses of the token: a sign-in link and the login form.
        r = httpx.get(f"{col.url}/?token={token}", follow_redirects=False, timeout=10)
        assert r.status_code == 303 and token not in r.headers["location"]
        r = httpx.post(
            f"{col.url}/login",
            data={"token": token, "next": "/"},
            headers={"Origin": col.url},
            follow_redirects=False,
            timeout=10,
        )
        assert r.status_code == 303, r.text
        # A revoked and a wrong token are refused without being echoed.
        for bad in (revoked, token[:-4] + "XXXX"):
            r = httpx.get(f"{col.url}/api/v1/runs", headers={"Authorization": f"Bearer {bad}"}, timeout=10)
            assert r.status_code == 401 and bad not in r.text
            r = httpx.get(f"{col.url}/runs?token={bad}", timeout=10)
            assert bad not in r.text
    finally:
        col.stop()
    collector_log = col.log_text()
    assert "GET /" in collector_log  # the access log was on: there was something to leak into
    for secret in (token, token[12:], revoked[12:], HOOK_SECRET):
        assert secret not in collector_log, f"secret in the collector's log: {secret[:6]}..."
        assert secret not in client_log, f"secret in the client's log: {secret[:6]}..."


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "collector.example"])
def test_non_loopback_bind_without_a_token_is_refused_with_the_reason(tmp_path, host):
    settings = Settings(db=f"sqlite:///{tmp_path / 'fresh.db'}", host=host)
    with pytest.raises(BindRefused) as e:
        prepare(settings)
    msg = str(e.value)
    assert f"refusing to listen on {host}" in msg and "no API token exists" in msg
    assert "stabmon token create" in msg  # says how to fix it
    assert not (tmp_path / "fresh.db.token").exists()  # no token was minted silently


@pytest.mark.integration
def test_serve_cli_exits_with_the_reason(tmp_path):
    cmd = [sys.executable, "-m", "stabmon_cli", "serve", "--db", f"sqlite:///{tmp_path / 'x.db'}"]
    cmd += ["--host", "0.0.0.0", "--port", "9"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0" in p.stderr and "nothing could authenticate" in p.stderr
