"""Authentication: bearer first, then the dashboard's cookie; tokens stored hashed; revocation."""

from __future__ import annotations

from sqlalchemy import select

from monitor.store import models as m
from monitor.store.tokens import hash_token


def test_missing_token_is_401_with_challenge(api):
    r = api.client.get("/api/v1/runs")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "missing token" in r.json()["detail"]


def test_wrong_and_malformed_tokens_are_401(api):
    for header in ["Bearer stm_nope", "Basic dXNlcjpwdw==", "Bearer", "Bearer " + "x" * 5000]:
        r = api.client.get("/api/v1/runs", headers={"Authorization": header})
        assert r.status_code == 401, header


def test_revoked_token_stops_working(api):
    assert api.client.get("/api/v1/runs", headers=api.headers).status_code == 200
    api.store.revoke_token(api.token[:12])
    r = api.client.get("/api/v1/runs", headers=api.headers)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_cookie_authenticates_and_bearer_wins(api):
    api.create_run("r")
    api.client.cookies.set("stabmon_token", api.token)
    assert api.client.get("/api/v1/runs/r").status_code == 200
    # An explicit header is used even when a cookie is present.
    assert api.client.get("/api/v1/runs/r", headers=api.other_headers).status_code == 404
    api.client.cookies.clear()


def test_tokens_are_stored_hashed_with_display_prefix(api):
    with api.store.engine.connect() as conn:
        rows = conn.execute(select(m.tokens.c.token_hash, m.tokens.c.prefix)).all()
    hashes = {r.token_hash for r in rows}
    assert hash_token(api.token) in hashes
    assert all(api.token not in r.token_hash for r in rows)
    assert api.token[:12] in {r.prefix for r in rows}


def test_token_list_and_revoke_by_id(store):
    tok, info = store.create_token("p", label="ci")
    assert store.resolve_token(tok).name == "p"
    listed = store.list_tokens("p")
    assert [(t.id, t.label, t.revoked_at) for t in listed] == [(info.id, "ci", None)]
    store.revoke_token(str(info.id))
    assert store.resolve_token(tok) is None
    assert store.list_tokens("p")[0].revoked_at is not None
    assert not store.has_active_tokens()
