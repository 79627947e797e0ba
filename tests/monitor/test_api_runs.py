"""Runs: idempotent registration, project scoping, listing with filters, updates."""

from __future__ import annotations


def test_create_is_idempotent_by_client_id(api):
    r1 = api.client.post(
        "/api/v1/runs",
        json={"id": "abc", "name": "first", "config": {"variant": "qk_norm"}},
        headers=api.headers,
    )
    assert r1.status_code == 201
    body = r1.json()
    assert (body["id"], body["project"], body["status"], body["config"]) == (
        "abc",
        "alpha",
        "running",
        {"variant": "qk_norm"},
    )
    r2 = api.client.post("/api/v1/runs", json={"id": "abc", "name": "retry"}, headers=api.headers)
    assert r2.status_code == 200
    assert r2.json()["name"] == "first"  # the stored run, unchanged
    assert api.client.get("/api/v1/runs", headers=api.headers).json()["total"] == 1


def test_create_without_id_generates_one(api):
    r = api.client.post("/api/v1/runs", json={"name": "x"}, headers=api.headers)
    assert r.status_code == 201 and len(r.json()["id"]) == 32


def test_project_in_body_must_match_token(api):
    r = api.client.post("/api/v1/runs", json={"name": "x", "project": "beta"}, headers=api.headers)
    assert r.status_code == 403 and "alpha" in r.json()["detail"]
    ok = api.client.post("/api/v1/runs", json={"name": "x", "project": "alpha"}, headers=api.headers)
    assert ok.status_code == 201


def test_run_id_of_another_project_is_another_run(api):
    api.create_run("shared")
    r = api.client.post("/api/v1/runs", json={"id": "shared", "name": "mine"}, headers=api.other_headers)
    assert r.status_code == 201 and (r.json()["id"], r.json()["project"]) == ("shared", "beta")
    again = api.client.post("/api/v1/runs", json={"id": "shared", "name": "x"}, headers=api.other_headers)
    assert again.status_code == 200 and again.json()["name"] == "mine"  # idempotent within beta
    assert api.client.get("/api/v1/runs/shared", headers=api.headers).json()["name"] == "shared"
    assert api.client.get("/api/v1/runs/shared", headers=api.other_headers).json()["name"] == "mine"


def test_other_projects_runs_are_invisible(api):
    api.create_run("secret", variant="baseline")
    api.post_points("secret", "b1", [{"step": 0, "values": {"loss": 1.0}}])
    h = api.other_headers
    for method, path, body in [
        ("GET", "/api/v1/runs/secret", None),
        ("PATCH", "/api/v1/runs/secret", {"status": "finished"}),
        ("POST", "/api/v1/runs/secret/points", {"batch_id": "x", "points": []}),
        ("GET", "/api/v1/runs/secret/keys", None),
        ("GET", "/api/v1/runs/secret/latest", None),
        ("GET", "/api/v1/runs/secret/series?keys=loss", None),
        ("GET", "/api/v1/runs/secret/alerts", None),
    ]:
        r = api.client.request(method, path, json=body, headers=h)
        assert r.status_code == 404, (method, path, r.text)
        assert "loss" not in r.text and "baseline" not in r.text
    assert api.client.get("/api/v1/runs", headers=h).json()["total"] == 0
    # and nothing was written by the foreign PATCH
    assert api.client.get("/api/v1/runs/secret", headers=api.headers).json()["status"] == "running"


def test_unknown_run_is_404(api):
    r = api.client.get("/api/v1/runs/nope", headers=api.headers)
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_patch_sets_status_and_merges_summary(api):
    api.create_run("r")
    r = api.client.patch("/api/v1/runs/r", json={"summary": {"a": 1, "b": 2}}, headers=api.headers)
    assert r.json()["summary"] == {"a": 1, "b": 2} and r.json()["status"] == "running"
    r = api.client.patch(
        "/api/v1/runs/r", json={"status": "diverged", "summary": {"b": 3}}, headers=api.headers
    )
    assert r.status_code == 200
    assert r.json()["status"] == "diverged" and r.json()["summary"] == {"a": 1, "b": 3}
    bad = api.client.patch("/api/v1/runs/r", json={"status": "exploded"}, headers=api.headers)
    assert bad.status_code == 422


def test_list_filters_and_paginates(api):
    for i in range(5):
        api.create_run(f"r{i}", variant="qk_norm" if i % 2 else "baseline")
    api.client.patch("/api/v1/runs/r0", json={"status": "finished"}, headers=api.headers)
    get = lambda q: api.client.get(f"/api/v1/runs?{q}", headers=api.headers).json()  # noqa: E731
    assert get("")["total"] == 5
    assert {r["id"] for r in get("variant=qk_norm")["items"]} == {"r1", "r3"}
    assert [r["id"] for r in get("status=finished")["items"]] == ["r0"]
    page1, page2 = get("limit=2&offset=0"), get("limit=2&offset=2")
    assert page1["total"] == 5 and len(page1["items"]) == 2
    assert not {r["id"] for r in page1["items"]} & {r["id"] for r in page2["items"]}
    assert api.client.get("/api/v1/runs?limit=0", headers=api.headers).status_code == 422
    assert api.client.get("/api/v1/runs?status=bogus", headers=api.headers).status_code == 422


def test_invalid_detector_config_is_rejected_at_registration(api):
    r = api.client.post(
        "/api/v1/runs", json={"name": "x", "config": {"detector": {"no_such_rule": {}}}}, headers=api.headers
    )
    assert r.status_code == 422 and "no_such_rule" in r.text


def test_bad_run_bodies_are_4xx(api):
    for body in [{}, {"name": ""}, {"name": "x", "id": "has space"}, {"name": "x", "extra": 1}, {"name": 5}]:
        r = api.client.post("/api/v1/runs", json=body, headers=api.headers)
        assert r.status_code == 422, body
    r = api.client.post(
        "/api/v1/runs", content=b"{not json", headers={**api.headers, "content-type": "application/json"}
    )
    assert r.status_code == 422 and "json" in r.text.lower()


def test_unstorable_text_is_422_not_500(api):
    # PostgreSQL text cannot hold NUL; SQLite can. Either way: never a 5xx.
    r = api.client.post("/api/v1/runs", json={"name": "a\x00b", "id": "n1"}, headers=api.headers)
    assert r.status_code in (201, 422), r.text
    api.create_run("r")
    r = api.post_points("r", "b\x00", [{"step": 0, "values": {"x": 1.0}}])
    assert r.status_code in (200, 422), r.text
    r = api.client.patch("/api/v1/runs/r", json={"summary": {"k": "v\x00"}}, headers=api.headers)
    assert r.status_code in (200, 422), r.text
    r = api.client.get("/api/v1/runs?variant=a%00b", headers=api.headers)
    assert r.status_code in (200, 422), r.text
