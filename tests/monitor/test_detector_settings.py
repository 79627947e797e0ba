"""Detector settings per collector, project and run through the API, on SQLite and PostgreSQL:
precedence, when a change applies (at registration), validation at each layer, and isolation
between projects."""

from __future__ import annotations

import pytest

from monitor.detector_settings import DetectorSettings
from monitor.settings import Settings
from stabmon.detect import DetectorConfig
from stabmon.detect.layers import LayerError
from stabmon.wire import RunCreate
from tests.monitor.conftest import make_api

DEFAULT = DetectorConfig().model_dump(mode="json")
PROJECT = "/api/v1/project/detector"


def put(api, overrides, headers=None):  # noqa: ANN001, ANN201
    return api.client.put(PROJECT, json={"overrides": overrides}, headers=headers or api.headers)


def nan_loss_severity(api, run_id: str) -> str:  # noqa: ANN001
    """The severity the run's detector gives a NaN loss (its non_finite rule)."""
    r = api.post_points(run_id, "nan", [{"step": 0, "values": {"loss": "nan"}}])
    # The alert started the app's webhook dispatcher, whose threads read the outbox: stop them,
    # or they may still be reading when the next test's fixture truncates the tables.
    api.client.app.state.alerts.stop()
    assert r.status_code == 200, r.text
    (alert,) = [a for a in r.json()["alerts"] if a["rule"] == "non_finite"]
    return alert["severity"]


def test_a_project_starts_with_the_collector_settings(store):
    api = make_api(store, settings=Settings(db=store.url, detector={"loss_spike.z_warning": 7}))
    body = api.client.get(PROJECT, headers=api.headers).json()
    assert body["project"] == "alpha" and body["problem"] is None
    assert body["layers"] == {"collector": {"loss_spike": {"z_warning": 7.0}}, "project": {}}
    assert body["sources"] == {"loss_spike.z_warning": "collector"}
    assert body["effective"]["loss_spike"] == {**DEFAULT["loss_spike"], "z_warning": 7.0}
    assert {k: v for k, v in body["effective"].items() if k != "loss_spike"} == {
        k: v for k, v in DEFAULT.items() if k != "loss_spike"
    }


def test_put_replaces_the_project_settings_and_get_reads_them(api):
    r = put(api, {"loss_spike": {"z_warning": "8"}, "logit_max.max_severity": "warning"})
    assert r.status_code == 200, r.text
    assert r.json()["layers"]["project"] == {
        "loss_spike": {"z_warning": 8.0},
        "logit_max": {"max_severity": "warning"},
    }
    assert api.client.get(PROJECT, headers=api.headers).json() == r.json()
    r = put(api, {"message_series": 5})  # a replacement, not a merge
    assert r.json()["layers"]["project"] == {"message_series": 5}
    assert r.json()["effective"]["loss_spike"] == DEFAULT["loss_spike"]
    assert put(api, {}).json()["layers"]["project"] == {}
    assert api.store.project_detector(api.store.find_project("alpha").id) == {}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"loss_spikes": {}}, "unknown detector override 'loss_spikes'"),
        ({"loss_spike.zwarn": 3}, "unknown field 'zwarn' for detector rule 'loss_spike'"),
        ({"logit_max": {"warning": 500, "critical": 100}}, "critical threshold 100.0 is below the warning"),
        ({"loss_spike": {"window": "many"}}, "loss_spike.window"),
        ({"entropy_collapse": 3}, "'entropy_collapse' must be a mapping"),
        ({"logit_max.critical": "inf"}, "logit_max.critical must be a finite number"),
    ],
)
def test_bad_project_settings_are_422_naming_the_problem_and_change_nothing(api, overrides, fragment):
    assert put(api, {"message_series": 4}).status_code == 200
    r = put(api, overrides)
    assert r.status_code == 422 and fragment in r.json()["detail"], r.text
    assert r.json()["detail"].startswith("project settings")
    assert api.client.get(PROJECT, headers=api.headers).json()["layers"]["project"] == {"message_series": 4}


def test_malformed_project_bodies_are_422(api):
    for body in [{}, {"overrides": [1]}, {"overrides": {}, "project": "beta"}, {"detector": {}}]:
        assert api.client.put(PROJECT, json=body, headers=api.headers).status_code == 422, body
    assert api.client.get(PROJECT).status_code == 401
    assert api.client.put(PROJECT, json={"overrides": {}}).status_code == 401


def test_a_token_sees_and_changes_only_its_own_project(api):
    assert put(api, {"loss_spike.z_warning": 8}).status_code == 200
    beta = api.client.get(PROJECT, headers=api.other_headers).json()
    assert beta["project"] == "beta" and beta["layers"]["project"] == {} and beta["sources"] == {}
    assert put(api, {"message_series": 2}, headers=api.other_headers).status_code == 200
    assert api.client.get(PROJECT, headers=api.headers).json()["layers"]["project"] == {
        "loss_spike": {"z_warning": 8.0}
    }
    # Runs of each project are judged by their own project's settings.
    api.create_run("r")
    r = api.client.post("/api/v1/runs", json={"id": "r", "name": "b"}, headers=api.other_headers)
    assert r.status_code == 201
    alpha = api.client.get("/api/v1/runs/r/detector", headers=api.headers).json()
    beta = api.client.get("/api/v1/runs/r/detector", headers=api.other_headers).json()
    assert alpha["sources"] == {"loss_spike.z_warning": "project"}
    assert beta["sources"] == {"message_series": "project"}


def test_precedence_collector_project_run_as_the_run_sees_it(store):
    api = make_api(
        store,
        settings=Settings(
            db=store.url,
            detector={
                "loss_spike": {"z_warning": 7, "z_critical": 20},
                "entropy_collapse.max_severity": "warning",
            },
        ),
    )
    assert put(api, {"loss_spike.z_warning": 9, "logit_max.warning": 100}).status_code == 200
    api.create_run("r", detector={"loss_spike.z_warning": 10, "non_finite.max_severity": "warning"})
    body = api.client.get("/api/v1/runs/r/detector", headers=api.headers).json()
    assert body["run_id"] == "r" and body["problem"] is None
    assert body["sources"] == {
        "entropy_collapse.max_severity": "collector",
        "logit_max.warning": "project",
        "loss_spike.z_critical": "collector",
        "loss_spike.z_warning": "run",
        "non_finite.max_severity": "run",
    }
    eff = body["effective"]
    assert (eff["loss_spike"]["z_warning"], eff["loss_spike"]["z_critical"]) == (10.0, 20.0)
    assert eff["logit_max"]["warning"] == 100.0 and eff["entropy_collapse"]["max_severity"] == "warning"
    assert body["layers"]["run"] == {
        "loss_spike": {"z_warning": 10.0},
        "non_finite": {"max_severity": "warning"},
    }
    # The run's stored config is what the client sent: the layers live beside it.
    run = api.client.get("/api/v1/runs/r", headers=api.headers).json()
    assert run["config"] == {"detector": {"loss_spike.z_warning": 10, "non_finite.max_severity": "warning"}}
    assert body["resolved_at"] == run["created_at"]
    # ...and the detector the collector runs is that one.
    assert nan_loss_severity(api, "r") == "warning"


def test_a_project_change_applies_to_runs_registered_after_it(api):
    api.create_run("before")
    assert put(api, {"non_finite.max_severity": "warning"}).status_code == 200
    api.create_run("after")
    assert nan_loss_severity(api, "before") == "critical"
    assert nan_loss_severity(api, "after") == "warning"
    before = api.client.get("/api/v1/runs/before/detector", headers=api.headers).json()
    assert (
        before["layers"]["project"] == {} and before["effective"]["non_finite"]["max_severity"] == "critical"
    )
    # A retried (or resumed) registration keeps the settings the run was registered with.
    r = api.client.post("/api/v1/runs", json={"id": "before", "name": "again"}, headers=api.headers)
    assert r.status_code == 200
    assert api.client.get("/api/v1/runs/before/detector", headers=api.headers).json() == before


def test_a_retry_is_not_refused_when_the_project_changed_under_the_run(api):
    api.create_run("r", detector={"loss_spike": {"z_warning": 8, "z_critical": 9}})
    # Now a new run with these overrides would be invalid (z_critical 9 < the project's 10)...
    assert put(api, {"loss_spike": {"z_warning": 10, "z_critical": 30}}).status_code == 200
    fresh = {"id": "new", "name": "n", "config": {"detector": {"loss_spike.z_critical": 9}}}
    r = api.client.post("/api/v1/runs", json=fresh, headers=api.headers)
    assert r.status_code == 422
    assert "invalid together with the project settings" in r.json()["detail"]
    assert r.json()["detail"].startswith("run's config.detector: invalid together")
    # ...but the existing run registering again (a job resuming) is answered as before.
    again = {
        "id": "r",
        "name": "r",
        "config": {"detector": {"loss_spike": {"z_warning": 8, "z_critical": 9}}},
    }
    assert api.client.post("/api/v1/runs", json=again, headers=api.headers).status_code == 200


def test_project_settings_that_no_longer_fit_the_collector_are_409_at_registration(store):
    api = make_api(store)
    assert put(api, {"loss_spike.z_critical": 10}).status_code == 200  # warning 6 < 10: fine
    # The collector restarts with a warning above the project's critical.
    api = make_api(
        store, settings=Settings(db=store.url, detector={"loss_spike": {"z_warning": 15, "z_critical": 40}})
    )
    alpha = {"Authorization": f"Bearer {store.create_token('alpha')[0]}"}
    r = api.client.post("/api/v1/runs", json={"id": "x", "name": "x"}, headers=alpha)
    assert r.status_code == 409, r.text
    assert "project settings: invalid together with the collector-wide settings" in r.json()["detail"]
    assert "PUT /api/v1/project/detector" in r.json()["detail"]
    shown = api.client.get(PROJECT, headers=alpha).json()
    assert shown["effective"] is None and "critical threshold 10.0" in shown["problem"]
    assert shown["layers"]["project"] == {"loss_spike": {"z_critical": 10.0}}
    assert put(api, {"loss_spike.z_critical": 30}, headers=alpha).status_code == 200
    assert api.client.post("/api/v1/runs", json={"id": "x", "name": "x"}, headers=alpha).status_code == 201


def test_runs_registered_before_layers_are_judged_by_their_own_overrides(api):
    pid = api.store.find_project("alpha").id
    api.store.create_run(pid, RunCreate(id="old", name="old", config={"detector": {"message_series": 2}}))
    assert api.store.run_detector_layers(pid, "old") is None  # as a run from before migration 0008
    assert put(api, {"non_finite.max_severity": "warning"}).status_code == 200
    body = api.client.get("/api/v1/runs/old/detector", headers=api.headers).json()
    assert body["layers"] == {"run": {"message_series": 2}} and body["sources"] == {"message_series": "run"}
    assert nan_loss_severity(api, "old") == "critical"


def test_a_run_whose_own_overrides_are_invalid_shows_the_problem(api):
    pid = api.store.find_project("alpha").id
    api.store.create_run(pid, RunCreate(id="bad", name="bad", config={"detector": {"no_rule": 1}}))
    body = api.client.get("/api/v1/runs/bad/detector", headers=api.headers).json()
    assert body["effective"] is None and "unknown detector override 'no_rule'" in body["problem"]
    assert body["layers"]["run"] == {"no_rule": 1}


def test_run_detector_of_another_project_is_404(api):
    api.create_run("mine")
    assert api.client.get("/api/v1/runs/mine/detector", headers=api.other_headers).status_code == 404
    assert api.client.get("/api/v1/runs/nope/detector", headers=api.headers).status_code == 404


def test_edit_project_sets_unsets_and_clears_all_or_nothing(store):
    settings = DetectorSettings(store, {"logit_max.warning": 50})
    pid = store.ensure_project("gamma")
    out = settings.edit_project(pid, set_={"logit_max.critical": 100, "loss_spike.z_warning": 8})
    # 100 is below the built-in warning (300) but above the collector's 50: accepted.
    assert out.layers["project"] == {"logit_max": {"critical": 100.0}, "loss_spike": {"z_warning": 8.0}}
    out = settings.edit_project(pid, unset=["loss_spike.z_warning"], set_={"message_series": 3})
    assert out.layers["project"] == {"logit_max": {"critical": 100.0}, "message_series": 3}
    with pytest.raises(LayerError, match="unknown field 'zz'"):
        settings.edit_project(pid, set_={"message_series": 4}, unset=["loss_spike.zz"])
    with pytest.raises(LayerError, match="below the warning threshold"):
        settings.edit_project(pid, set_={"message_series": 4, "logit_max.critical": 40})
    assert store.project_detector(pid) == {"logit_max": {"critical": 100.0}, "message_series": 3}
    assert settings.edit_project(pid, clear=True, set_={"evidence_series": 2}).layers["project"] == {
        "evidence_series": 2
    }
    assert settings.edit_project(pid, clear=True).layers["project"] == {}


def test_collector_settings_are_checked_when_settings_load(monkeypatch):
    monkeypatch.setenv("STABMON_DETECTOR", '{"entropy_collapse": {"max_severity": "warning"}}')
    assert Settings().detector == {"entropy_collapse": {"max_severity": "warning"}}
    monkeypatch.setenv("STABMON_DETECTOR", '{"entropy_collapse": {"max_sev": "warning"}}')
    with pytest.raises(ValueError, match=r"STABMON_DETECTOR.*unknown field 'max_sev'"):
        Settings()
    monkeypatch.setenv("STABMON_DETECTOR", '{"entropy_collapse": ')
    with pytest.raises(ValueError, match="STABMON_DETECTOR is not valid JSON"):
        Settings()
    monkeypatch.setenv("STABMON_DETECTOR", "")
    assert Settings().detector == {}
