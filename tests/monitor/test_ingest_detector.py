"""The ingest service with a detector: alert lifecycle, state persistence, replay, isolation.

Most cases use a tiny test-only detector (``x`` above 1 is a warning, above 10 critical) so
the alert semantics are checked independently of the real rules; the last ones run the real
``stabmon.detect`` detector end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import delete, select

from monitor.store import models as m
from tests.monitor.conftest import make_api


@dataclass
class F:
    rule: str
    severity: str
    step: int
    message: str
    evidence: dict = field(default_factory=dict)


@dataclass
class State:
    seen: list = field(default_factory=list)


class Threshold:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def new_state(self) -> State:
        return State()

    def observe(self, state: State, step: int, values: dict) -> list[F]:
        if self.fail:
            raise RuntimeError("detector bug")
        state.seen.append(step)
        x = values.get("x")
        if x is None or not x > 1:
            return []
        return [
            F("x_high", "critical" if x > 10 else "warning", step, f"x={x}", {"x": x, "bad": float("nan")})
        ]


class Factory:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def build(self, run_config):  # noqa: ANN001, ANN201
        return Threshold(self.fail)

    def restore(self, d):  # noqa: ANN001, ANN201
        return State(list(d["seen"]))

    def snapshot(self, s):  # noqa: ANN001, ANN201
        return {"seen": list(s.seen)}


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def notify(self, run, alerts) -> None:  # noqa: ANN001
        self.calls.append((run.id, [(a.rule, a.status, a.severity) for a in alerts]))


def xs(api, batch, start, values, rank=0):  # noqa: ANN001, ANN201
    pts = [{"step": start + i, "rank": rank, "values": {"x": v}} for i, v in enumerate(values)]
    r = api.post_points("r", batch, pts)
    assert r.status_code == 200, r.text
    return r.json()


def test_alert_opens_updates_escalates_and_resolves(store):
    rec = Recorder()
    api = make_api(store, detectors=Factory(), notifier=rec)
    api.create_run("r")
    out = xs(api, "b1", 0, [0.5, 2.0, 3.0])
    assert [(a["rule"], a["severity"], a["step"], a["last_step"]) for a in out["alerts"]] == [
        ("x_high", "warning", 1, 2)
    ]
    assert out["alerts"][0]["evidence"] == {"x": 3.0, "bad": "nan"}
    out = xs(api, "b2", 3, [20.0, 2.0])  # escalates; severity does not drop back while open
    assert [(a["severity"], a["step"], a["last_step"]) for a in out["alerts"]] == [("critical", 1, 4)]
    assert api.client.get("/api/v1/runs/r", headers=api.headers).json()["status"] == "running"
    out = xs(api, "b3", 5, [0.0])  # the batch that resolves it says so
    assert [(a["status"], a["severity"], a["last_step"]) for a in out["alerts"]] == [
        ("resolved", "critical", 4)
    ]
    assert xs(api, "b4", 6, [0.0])["alerts"] == []
    alerts = api.client.get("/api/v1/runs/r/alerts", headers=api.headers).json()
    assert [(a["status"], a["severity"], a["step"], a["last_step"]) for a in alerts] == [
        ("resolved", "critical", 1, 4)
    ]
    assert [c[1] for c in rec.calls] == [
        [("x_high", "open", "warning")],
        [("x_high", "open", "critical")],
        [("x_high", "resolved", "critical")],
    ]


def test_reopening_within_one_batch_keeps_one_open_alert(store):
    api = make_api(store, detectors=Factory())
    api.create_run("r")
    out = xs(api, "b1", 0, [2.0, 0.0, 5.0, 6.0])
    # The open alert first, then the one that opened and resolved within the batch: a job acting
    # on warnings hears of both.
    assert [(a["status"], a["step"], a["last_step"]) for a in out["alerts"]] == [
        ("open", 2, 3),
        ("resolved", 0, 0),
    ]
    alerts = api.client.get("/api/v1/runs/r/alerts?status=resolved", headers=api.headers).json()
    assert [(a["step"], a["last_step"]) for a in alerts] == [(0, 0)]


def test_duplicate_batch_returns_open_alerts_without_refeeding(store):
    api = make_api(store, detectors=Factory())
    api.create_run("r")
    xs(api, "b1", 0, [2.0])
    again = xs(api, "b1", 0, [2.0])
    assert again["duplicate"] and [a["rule"] for a in again["alerts"]] == ["x_high"]
    assert _seen(store) == [0]


def _seen(store):  # noqa: ANN001, ANN202
    from monitor.store.run_state import load_state

    with store.engine.connect() as conn:
        key = conn.execute(select(m.runs.c.id).where(m.runs.c.external_id == "r")).scalar_one()
        return load_state(conn, key)[0]["seen"]


def test_state_survives_a_collector_restart_and_is_rebuilt_when_missing(store):
    api = make_api(store, detectors=Factory())
    api.create_run("r")
    xs(api, "b1", 0, [0.0, 0.0])
    restarted = make_api(store, detectors=Factory())
    restarted.token = api.token
    xs(restarted, "b2", 2, [0.0])
    assert _seen(store) == [0, 1, 2]
    with store.engine.begin() as conn:
        conn.execute(delete(m.run_state))
    xs(restarted, "b3", 3, [0.0])
    assert _seen(store) == [0, 1, 2, 3]  # replayed from the stored series, then fed the batch


def test_only_rank_zero_feeds_the_detector(store):
    api = make_api(store, detectors=Factory())
    api.create_run("r")
    out = xs(api, "b1", 0, [50.0], rank=1)
    assert out["alerts"] == [] and out["accepted"] == 1


def test_a_failing_detector_does_not_fail_ingest(store):
    api = make_api(store, detectors=Factory(fail=True))
    api.create_run("r")
    out = xs(api, "b1", 0, [50.0])
    assert out["accepted"] == 1 and out["alerts"] == []
    assert api.client.get("/api/v1/runs/r/latest", headers=api.headers).json()["values"]["x"]["value"] == 50.0


def test_real_detector_flags_a_non_finite_loss(api):
    api.create_run("r")
    pts = [{"step": s, "values": {"loss": 3.0 - 0.01 * s, "grad_norm": 1.0}} for s in range(30)]
    pts.append({"step": 30, "values": {"loss": "nan", "grad_norm": "inf"}})
    r = api.post_points("r", "b1", pts)
    assert r.status_code == 200
    alerts = r.json()["alerts"]
    assert any(
        a["rule"] == "non_finite" and a["severity"] == "critical" and a["step"] == 30 for a in alerts
    ), alerts
    assert api.client.get("/api/v1/runs/r", headers=api.headers).json()["open_alerts"] == len(alerts)


def test_run_detector_overrides_are_applied(api):
    api.create_run("r", detector={"non_finite": {"enabled": False}})
    r = api.post_points("r", "b1", [{"step": 0, "values": {"loss": "nan"}}])
    assert r.status_code == 200 and not [a for a in r.json()["alerts"] if a["rule"] == "non_finite"]
