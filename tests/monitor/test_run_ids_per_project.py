"""Run ids are unique per project: two projects each register a run ``exp-1`` and send to it
at the same time, and the two runs stay fully apart (points, series and their rollups, latest
values, keys, batch idempotency, detector state, alerts, webhooks and their delivery log,
status, listings, dashboard pages), on SQLite and PostgreSQL. Deleting one of them leaves the
other whole, and the id can then be registered afresh in its project.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from monitor.api import create_app
from monitor.settings import Settings
from monitor.store import models as m
from tests.monitor._alerts_receiver import Receiver
from tests.monitor.test_alerts_api import wait_until

RUN = "exp-1"
BATCHES = 12
STEPS = 20  # per batch: 240 steps, so the series query below reads rollups


def _points(project: str, batch: int) -> list[dict]:
    """alpha: a finite loss and its own key; beta: another loss, another key, NaN at the end."""
    out = []
    for s in range(batch * STEPS, (batch + 1) * STEPS):
        if project == "alpha":
            out.append({"step": s, "values": {"loss": 1.0 + s / 1000, "layer.0.fc1.l2_mean": 2.0}})
        else:
            last = batch == BATCHES - 1 and s == (batch + 1) * STEPS - 1
            out.append({"step": s, "values": {"loss": "nan" if last else 5.0, "layer.1.fc2.l2_mean": 7.0}})
    return out


@pytest.fixture
def two(store, monkeypatch):  # noqa: ANN001, ANN201
    """A collector with global webhooks to a receiver, and a client per project."""
    monkeypatch.setenv("STABMON_WEBHOOK_BACKOFF_S", "0.05")
    with Receiver() as hook:
        monkeypatch.setenv("STABMON_WEBHOOK_URLS", f'["{hook.url}/hook"]')
        app = create_app(Settings(db=store.url), store=store)
        clients = {}
        for project in ("alpha", "beta"):
            token, _ = store.create_token(project)
            clients[project] = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        yield clients, hook
        app.state.alerts.stop()


def _register(clients: dict) -> None:
    for project, client in clients.items():
        body = {"id": RUN, "name": f"{project}-name", "config": {"variant": f"{project}_variant"}}
        r = client.post("/api/v1/runs", json=body)
        assert r.status_code == 201, r.text
        assert (r.json()["id"], r.json()["project"]) == (RUN, project)


def _send_concurrently(clients: dict) -> dict[str, list[dict]]:
    """Both projects post their batches at once, under the same batch ids."""
    start = threading.Barrier(2)

    def send(project: str) -> list[dict]:
        start.wait()
        out = []
        for b in range(BATCHES):
            r = clients[project].post(
                f"/api/v1/runs/{RUN}/points", json={"batch_id": f"b{b}", "points": _points(project, b)}
            )
            assert r.status_code == 200, r.text
            out.append(r.json())
        return out

    with ThreadPoolExecutor(2) as pool:
        futures = {p: pool.submit(send, p) for p in clients}
        return {p: f.result() for p, f in futures.items()}


def test_same_run_id_in_two_projects_stays_apart(two, store):
    clients, hook = two
    alpha, beta = clients["alpha"], clients["beta"]
    _register(clients)
    answers = _send_concurrently(clients)
    # Same batch ids in both projects: each stored once in its own run, none a duplicate.
    for project in clients:
        assert [a["duplicate"] for a in answers[project]] == [False] * BATCHES
        assert sum(a["accepted"] for a in answers[project]) == BATCHES * STEPS * 2
    assert answers["alpha"][-1]["alerts"] == []
    (b_alert,) = answers["beta"][-1]["alerts"]
    assert (b_alert["run_id"], b_alert["rule"]) == (RUN, "non_finite")
    # A retry of a stored batch is a duplicate in its own project only.
    again = alpha.post(f"/api/v1/runs/{RUN}/points", json={"batch_id": "b0", "points": _points("alpha", 0)})
    assert again.json()["duplicate"] and again.json()["alerts"] == []

    for project, client, key, other_key in (
        ("alpha", alpha, "layer.0.fc1.l2_mean", "layer.1.fc2.l2_mean"),
        ("beta", beta, "layer.1.fc2.l2_mean", "layer.0.fc1.l2_mean"),
    ):
        run = client.get(f"/api/v1/runs/{RUN}").json()
        assert (run["name"], run["config"]["variant"]) == (f"{project}-name", f"{project}_variant")
        assert run["last_step"] == BATCHES * STEPS - 1
        assert run["open_alerts"] == (1 if project == "beta" else 0)
        keys = [k["key"] for k in client.get(f"/api/v1/runs/{RUN}/keys").json()["keys"]]
        assert keys == sorted([key, "loss"]) and other_key not in keys
        latest = client.get(f"/api/v1/runs/{RUN}/latest").json()["values"]
        assert latest["loss"]["value"] == (
            1.0 + (BATCHES * STEPS - 1) / 1000 if project == "alpha" else "nan"
        )
        listed = client.get("/api/v1/runs").json()
        assert [(r["id"], r["name"]) for r in listed["items"]] == [(RUN, f"{project}-name")]
        page = client.get(f"/runs/{RUN}")
        assert page.status_code == 200 and f"{project}-name" in page.text
        assert ("beta" if project == "alpha" else "alpha") + "-name" not in page.text

    # Series, raw and from the rollups (240 steps in 24 buckets of 16-step chunks).
    raw_a = alpha.get(f"/api/v1/runs/{RUN}/series", params={"keys": "loss", "max_points": 1000}).json()
    assert raw_a["series"]["loss"]["max"][:3] == [1.0, 1.001, 1.002]
    down_a = alpha.get(f"/api/v1/runs/{RUN}/series", params={"keys": "loss", "max_points": 16}).json()
    down_b = beta.get(f"/api/v1/runs/{RUN}/series", params={"keys": "loss", "max_points": 16}).json()
    assert down_a["downsampled"] and sum(down_a["series"]["loss"]["count"]) == BATCHES * STEPS
    assert max(down_a["series"]["loss"]["max"]) < 2 and set(down_b["series"]["loss"]["max"]) == {5.0}
    assert sum(down_b["series"]["loss"]["nan_count"]) == 1

    # Alerts, and the other project's alert id under the same run id is not found.
    assert alpha.get(f"/api/v1/runs/{RUN}/alerts").json() == []
    assert [a["id"] for a in beta.get(f"/api/v1/runs/{RUN}/alerts").json()] == [b_alert["id"]]
    assert alpha.get(f"/api/v1/runs/{RUN}/alerts/{b_alert['id']}/deliveries").status_code == 404

    # The webhook names the run by its external id and its project; the log shows the same id.
    body = hook.wait_for(1)[0]["json"]
    assert (body["run"]["id"], body["run"]["project"], body["run"]["name"]) == (RUN, "beta", "beta-name")
    url = f"/api/v1/runs/{RUN}/alerts/{b_alert['id']}/deliveries"
    log = wait_until(lambda: beta.get(url).json())
    assert [(d["run_id"], d["outcome"]) for d in log] == [(RUN, "delivered")]
    assert [d["run_id"] for d in beta.get(f"/api/v1/runs/{RUN}/deliveries").json()] == [RUN]
    assert alpha.get(f"/api/v1/runs/{RUN}/deliveries").json() == []

    # Status is per run.
    assert alpha.patch(f"/api/v1/runs/{RUN}", json={"status": "finished"}).json()["status"] == "finished"
    assert beta.get(f"/api/v1/runs/{RUN}").json()["status"] == "running"

    # In the database: two runs, each with its own series, detector state and batches.
    with store.engine.connect() as conn:
        keys = conn.execute(select(m.runs.c.id).where(m.runs.c.external_id == RUN)).scalars().all()
        assert len(set(keys)) == 2 and RUN not in keys
        assert conn.execute(select(func.count()).select_from(m.run_state)).scalar_one() == 2
        per_run = conn.execute(
            select(m.ingest_batches.c.run_id, func.count()).group_by(m.ingest_batches.c.run_id)
        ).all()
        assert sorted(n for _, n in per_run) == [BATCHES, BATCHES]


def test_deleting_one_projects_run_leaves_the_other_whole(two, store):
    clients, _ = two
    alpha, beta = clients["alpha"], clients["beta"]
    _register(clients)
    _send_concurrently(clients)
    before = {
        path: beta.get(f"/api/v1/runs/{RUN}{path}").json() for path in ("", "/latest", "/keys", "/alerts")
    }
    # The collector has no delete route: runs are deleted in SQL, and everything else of the run
    # goes with its row (ON DELETE CASCADE).
    with store.engine.begin() as conn:
        alpha_id = select(m.projects.c.id).where(m.projects.c.name == "alpha").scalar_subquery()
        gone = conn.execute(
            delete(m.runs).where(m.runs.c.project_id == alpha_id, m.runs.c.external_id == RUN)
        ).rowcount
        assert gone == 1
        assert conn.execute(select(func.count()).select_from(m.runs)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(m.run_state)).scalar_one() == 1
    assert alpha.get(f"/api/v1/runs/{RUN}").status_code == 404
    after = {
        path: beta.get(f"/api/v1/runs/{RUN}{path}").json() for path in ("", "/latest", "/keys", "/alerts")
    }
    assert after == before
    series = beta.get(f"/api/v1/runs/{RUN}/series", params={"keys": "loss", "max_points": 1000}).json()
    assert len(series["series"]["loss"]["step"]) == BATCHES * STEPS

    # The id comes back in its project as a new, empty run: the collector's in-memory detector
    # state of the deleted run is not carried over (it is keyed by the run's internal key).
    r = alpha.post(
        "/api/v1/runs", json={"id": RUN, "name": "alpha-name", "config": {"variant": "alpha_variant"}}
    )
    assert r.status_code == 201 and r.json()["last_step"] is None
    assert alpha.get(f"/api/v1/runs/{RUN}/keys").json()["keys"] == []
    r = alpha.post(f"/api/v1/runs/{RUN}/points", json={"batch_id": "b0", "points": _points("alpha", 0)})
    assert r.status_code == 200 and not r.json()["duplicate"] and r.json()["alerts"] == []
    assert alpha.get(f"/api/v1/runs/{RUN}").json()["last_step"] == STEPS - 1
    assert beta.get(f"/api/v1/runs/{RUN}").json() == before[""]
