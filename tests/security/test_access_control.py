"""Access control across projects, on every route the app has.

Routes are enumerated from ``app.routes`` (included routers flattened), so an endpoint added
later is covered without touching this file: a route must either be in :data:`PUBLIC` (no
project data: health, docs, assets, login) or behave as a project route. With project A's
token, every project route is called on project B's run (and B's alert) and on a run that
does not exist: the answers must be identical once the ids are swapped, so A cannot read,
write, list or even learn of B's runs, alerts or series; B's data must be unchanged after
all of A's attempts, and no answer may carry B's names, keys or config. Also: revoked tokens
stop working on the very next request, tokens are stored only as hashes, and project tokens
do not open ``/metrics`` when it has its own token.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from monitor.api import create_app
from monitor.settings import Settings
from monitor.store.tokens import hash_token

B_RUN = "beta-run-7f3a"
GHOST = "ghost-run-7f3a"  # same shape, never created
B_MARKERS = ("beta-secret-name", "betasecretkey", "beta_variant_secret", B_RUN)
# Routes that hold no project data; everything else must be scoped to the token's project.
PUBLIC = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # operator endpoint, its own token: tested below
    ("GET", "/static/{name}"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
}
# Sample values for path parameters: (B's object, a missing one). Unknown names fail loudly.
PARAMS = {"run_id": (B_RUN, GHOST), "alert_id": (None, "999999")}


def app_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route, with included routers flattened."""

    def walk(routes, prefix: str = ""):  # noqa: ANN001, ANN202
        for r in routes:
            if hasattr(r, "original_router"):  # FastAPI >= 0.120 keeps included routers lazily
                yield from walk(r.original_router.routes, prefix + r.include_context.prefix)
            elif hasattr(r, "routes") and not hasattr(r, "methods"):  # a Mount / sub-router
                yield from walk(r.routes, prefix + getattr(r, "path", ""))
            elif hasattr(r, "path"):
                for m in sorted(getattr(r, "methods", None) or {"GET"}):
                    if m != "HEAD":
                        yield m, prefix + r.path

    return sorted(set(walk(app.routes)))


BODIES = {
    "POST /api/v1/runs/{run_id}/points": {
        "batch_id": "a-b1",
        "points": [{"step": 99, "values": {"loss": 0.0}}],
    },
    "PATCH /api/v1/runs/{run_id}": {"status": "stopped", "summary": {"pwned": True}},
}


@pytest.fixture
def world(store):  # noqa: ANN201
    settings = Settings(db=store.url, metrics_token="metrics-secret-0123456789")
    client = TestClient(create_app(settings, store=store))
    a_tok, _ = store.create_token("alpha")
    b_tok, _ = store.create_token("beta")
    ha, hb = {"Authorization": f"Bearer {a_tok}"}, {"Authorization": f"Bearer {b_tok}"}
    r = client.post(
        "/api/v1/runs",
        json={"id": B_RUN, "name": "beta-secret-name", "config": {"variant": "beta_variant_secret"}},
        headers=hb,
    )
    assert r.status_code == 201, r.text
    pts = [{"step": s, "values": {"loss": 2.0, "layer.0.fc2.betasecretkey": 1.0}} for s in range(20)]
    pts.append({"step": 20, "values": {"loss": "nan", "layer.0.fc2.betasecretkey": 1.0}})
    r = client.post(f"/api/v1/runs/{B_RUN}/points", json={"batch_id": "b1", "points": pts}, headers=hb)
    assert r.status_code == 200 and r.json()["alerts"], r.text  # the NaN loss opened an alert
    b_alert = r.json()["alerts"][0]["id"]
    assert client.post("/api/v1/runs", json={"id": "alpha-run", "name": "a"}, headers=ha).status_code == 201
    return client, ha, hb, b_tok, b_alert


def _fill(path: str, which: int, b_alert: int) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        assert name in PARAMS, f"new path parameter {name!r}: add sample values to PARAMS"
        v = PARAMS[name][which]
        return str(b_alert) if v is None else v

    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", sub, path)


def _normalise(text_: str, b_alert: int) -> str:
    return (
        text_.replace(B_RUN, "<run>")
        .replace(GHOST, "<run>")
        .replace(str(b_alert), "<id>")
        .replace("999999", "<id>")
    )


def _b_snapshot(client, hb) -> tuple:  # noqa: ANN001
    run = client.get(f"/api/v1/runs/{B_RUN}", headers=hb).json()
    latest = client.get(f"/api/v1/runs/{B_RUN}/latest", headers=hb).json()
    alerts = client.get(f"/api/v1/runs/{B_RUN}/alerts", headers=hb).json()
    return run["status"], run["summary"], run["last_step"], latest, [(a["id"], a["status"]) for a in alerts]


def test_every_route_is_public_or_scoped_to_the_tokens_project(world):
    client, ha, hb, _, b_alert = world
    before = _b_snapshot(client, hb)
    routes = app_routes(client.app)
    assert ("POST", "/api/v1/runs/{run_id}/points") in routes and ("GET", "/runs/{run_id}") in routes
    checked = 0
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        body = BODIES.get(f"{method} {path}")
        params = {"keys": "loss,layer.0.fc2.betasecretkey", "runs": B_RUN}
        for auth in ("header", "cookie"):
            kw = (
                {"headers": ha}
                if auth == "header"
                else {"cookies": {"stabmon_token": ha["Authorization"][7:]}}
            )
            answers = []
            for which in (0, 1):
                url = _fill(path, which, b_alert)
                p = {k: _fill(v, which, b_alert) if k == "runs" else v for k, v in params.items()}
                if which == 1:
                    p["runs"] = GHOST
                client.cookies.clear()
                r = client.request(method, url, params=p, json=body, follow_redirects=False, **kw)
                client.cookies.clear()
                assert r.status_code < 500, (method, url, r.text[:300])
                answers.append((r.status_code, _normalise(r.text, b_alert)))
                leaked = [m for m in B_MARKERS[:3] if m in r.text]
                assert not leaked, (method, url, auth, leaked)
            if "{" in path:
                assert answers[0][0] in (404, 405, 422), (method, path, answers[0])
            assert answers[0] == answers[1], (method, path, auth)  # B's run looks like no run at all
            checked += 1
    assert checked >= 2 * 16
    assert _b_snapshot(client, hb) == before  # nothing A sent changed B's run


def test_b_is_absent_from_a_s_listings(world):
    client, ha, _, _, _ = world
    runs = client.get("/api/v1/runs", headers=ha).json()
    assert [r["id"] for r in runs["items"]] == ["alpha-run"] and runs["total"] == 1
    for status in ("running", "finished", "diverged", "stopped"):
        assert B_RUN not in client.get("/api/v1/runs", params={"status": status}, headers=ha).text
    assert (
        client.get("/api/v1/runs", params={"variant": "beta_variant_secret"}, headers=ha).json()["total"] == 0
    )


def test_registering_another_projects_run_id_reveals_nothing(world):
    client, ha, hb, _, b_alert = world
    before = _b_snapshot(client, hb)
    taken = client.post("/api/v1/runs", json={"id": B_RUN, "name": "x"}, headers=ha)
    fresh = client.post("/api/v1/runs", json={"id": GHOST, "name": "x"}, headers=ha)
    assert taken.status_code == fresh.status_code == 201
    same = {k: v for k, v in taken.json().items() if k not in ("id", "created_at", "updated_at")}
    assert same == {k: v for k, v in fresh.json().items() if k not in ("id", "created_at", "updated_at")}
    assert not [m for m in B_MARKERS[:3] if m in taken.text]
    # A's run of that id is A's own: empty, no alerts, and B's run is untouched.
    assert client.get(f"/api/v1/runs/{B_RUN}/alerts", headers=ha).json() == []
    assert client.get(f"/api/v1/runs/{B_RUN}/latest", headers=ha).json()["values"] == {}
    assert _b_snapshot(client, hb) == before


def test_revoked_token_stops_working_on_the_next_request(world):
    client, _, hb, b_tok, _ = world
    assert client.get(f"/api/v1/runs/{B_RUN}/latest", headers=hb).status_code == 200
    client.app.state.store.revoke_token(b_tok)
    for method, path in [("GET", f"/api/v1/runs/{B_RUN}/latest"), ("GET", "/api/v1/runs")]:
        assert client.request(method, path, headers=hb).status_code == 401
    r = client.post(f"/api/v1/runs/{B_RUN}/points", json={"batch_id": "late", "points": []}, headers=hb)
    assert r.status_code == 401
    client.cookies.set("stabmon_token", b_tok)
    page = client.get(f"/runs/{B_RUN}", follow_redirects=False)
    client.cookies.clear()
    assert page.status_code == 401 and "beta-secret-name" not in page.text


def test_tokens_exist_in_the_database_only_as_hashes(world):
    client, _, _, b_tok, _ = world
    store = client.app.state.store
    tables = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
        "postgresql": "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
    }
    with store.engine.connect() as conn:
        names = [r[0] for r in conn.execute(text(tables[store.dialect]))]
        dump = []
        for name in names:
            for row in conn.execute(text(f'SELECT * FROM "{name}"')):
                dump.append(" ".join(str(v) for v in row))
    blob = "\n".join(dump)
    assert hash_token(b_tok) in blob
    secret_part = b_tok[12:]  # everything past the display prefix kept for `token list`
    assert secret_part not in blob and b_tok not in blob


def test_project_tokens_do_not_open_metrics(world):
    client, ha, _, _, _ = world
    assert client.get("/metrics", headers=ha).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret-0123456789"})
    assert ok.status_code == 200
