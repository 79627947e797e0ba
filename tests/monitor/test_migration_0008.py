"""Migration 0008 (projects.detector, runs.detector_layers) on a populated database, SQLite and
PostgreSQL: existing rows survive both ways, old runs read as "no saved layers", and the
downgrade drops only the two columns (no table rebuild, so no cascade deletes on SQLite)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import inspect, text

from monitor.detector_settings import DetectorSettings
from monitor.store import Store, migrate
from monitor.store.engine import make_engine
from stabmon.wire import Point, RunCreate
from tests.monitor._old_schema import reflected


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return request.getfixturevalue("pg_schema_url")()


def _populate_0007(url: str) -> None:
    """A project with one run, its series, points and an alert, written in the 0007 schema."""
    now = datetime.now(timezone.utc)
    with reflected(url) as (conn, t):
        conn.execute(t["projects"].insert(), {"id": 1, "name": "alpha", "created_at": now})
        conn.execute(t["runs"].insert(), {
            "id": "k-old", "project_id": 1, "external_id": "old", "name": "old", "status": "running",
            "variant": None, "config": {"detector": {"message_series": 2}}, "summary": {},
            "last_step": 4, "created_at": now, "updated_at": now,
        })  # fmt: skip
        sid = conn.execute(
            t["series"].insert().returning(t["series"].c.id),
            {"run_id": "k-old", "key": "loss", "layer": None, "site": None, "stat": "loss"},
        ).scalar_one()
        conn.execute(
            t["points"].insert(),
            [{"series_id": sid, "rank": 0, "step": s, "value": 5.0 - s} for s in range(5)],
        )
        conn.execute(t["alerts"].insert(), {
            "run_id": "k-old", "rule": "loss_spike", "severity": "warning", "status": "open", "step": 4,
            "last_step": 4, "message": "m", "evidence": {}, "created_at": now, "updated_at": now,
        })  # fmt: skip


def _columns(url: str, table: str) -> set[str]:
    eng = make_engine(url, pool_size=1)
    try:
        return {c["name"] for c in inspect(eng).get_columns(table)}
    finally:
        eng.dispose()


def _counts(url: str) -> dict[str, int]:
    eng = make_engine(url, pool_size=1)
    try:
        with eng.connect() as conn:
            return {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in ("projects", "runs", "series", "points", "alerts")
            }
    finally:
        eng.dispose()


def test_0008_up_and_down_with_data(url):
    migrate.upgrade(url, "0007")
    _populate_0007(url)
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    migrate.check(url)
    assert "detector" in _columns(url, "projects") and "detector_layers" in _columns(url, "runs")
    store = Store(url, pool_size=1)
    try:
        # The old run: all its rows, no saved layers (judged by its own overrides, as before).
        run = store.get_run(1, "old")
        assert (run.last_step, run.open_alerts, run.config) == (4, 1, {"detector": {"message_series": 2}})
        assert store.series(1, "old", ["loss"]).series["loss"].last == [5.0, 4.0, 3.0, 2.0, 1.0]
        assert store.run_detector_layers(1, "old") is None
        assert store.project_detector(1) == {}
        # New data in the new columns.
        settings = DetectorSettings(store, {"loss_spike.z_warning": 7})
        settings.replace_project(1, {"logit_max.warning": 100})
        layers, config = settings.layers_for_new_run(1, {})
        assert (config.loss_spike.z_warning, config.logit_max.warning) == (7.0, 100.0)
        assert layers == {
            "collector": {"loss_spike": {"z_warning": 7.0}},
            "project": {"logit_max": {"warning": 100.0}},
        }
        store.create_run(1, RunCreate(id="new", name="new"), layers)
        store.write_points(1, "new", "b", [Point(step=0, values={"loss": 1.0})])
        assert store.run_detector_layers(1, "new") == layers
        before = _counts(url)
    finally:
        store.dispose()

    migrate.downgrade(url, "0007")
    assert "detector" not in _columns(url, "projects") and "detector_layers" not in _columns(url, "runs")
    assert _counts(url) == before  # nothing lost with the columns
    migrate.upgrade(url)
    assert _counts(url) == before
    store = Store(url, pool_size=1)
    try:
        assert store.project_detector(1) == {}
        assert store.run_detector_layers(1, "new") is None and store.run_detector_layers(1, "old") is None
        assert store.series(1, "new", ["loss"]).series["loss"].last == [1.0]
        assert store.get_run(1, "old").open_alerts == 1
    finally:
        store.dispose()
