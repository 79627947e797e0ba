"""Grafana's PostgreSQL panels against the real schema: a fresh database gets the compose
stack's read-only role (``deploy/postgres/10-grafana-reader.sh``, run as the PostgreSQL image
would, before the collector migrates), then the collector's migrations and a run with
points and alerts, plus another project's run of the same id; every SQL query of the
provisioned dashboard then runs as that role and returns the chosen run's data (and only
its), and the role cannot write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from bench.synthetic_runs import RunShape, points
from tests._services import require_service
from tests.dashboard.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PG_SERVER = os.environ.get("STABMON_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DASHBOARD_JSON = REPO / "deploy" / "grafana" / "dashboards" / "stabmon.json"
READER_SCRIPT = REPO / "deploy" / "postgres" / "10-grafana-reader.sh"


def _admin():  # noqa: ANN202
    return create_engine(
        f"{PG_SERVER}/postgres", connect_args={"connect_timeout": 2}, isolation_level="AUTOCOMMIT"
    )


@pytest.fixture(scope="module")
def history_db() -> Iterator[dict]:
    if shutil.which("psql") is None:
        require_service("psql", "not installed")
    try:
        admin = _admin()
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        require_service("PostgreSQL", "not reachable at 127.0.0.1:5432 (scripts/services.sh starts it)")
    suffix = uuid.uuid4().hex[:10]
    db, reader, password = f"stabmon_dash_{suffix}", f"grafana_reader_{suffix}", f"pw-{suffix}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    url = f"{PG_SERVER}/{db}"
    owner = re.match(r"postgresql\+psycopg://([^:@/]+)", PG_SERVER).group(1)
    try:
        # The PostgreSQL image runs the init script with these variables set.
        env = {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "POSTGRES_USER": owner,
            "POSTGRES_DB": db,
            "STABMON_GRAFANA_DB_USER": reader,
            "STABMON_GRAFANA_DB_PASSWORD": password,
        }
        out = subprocess.run(
            ["/bin/sh", str(READER_SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        _populate(url)
        yield {"url": url, "reader_url": f"postgresql+psycopg://{reader}:{password}@127.0.0.1:5432/{db}"}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{reader}"'))
        admin.dispose()


def _populate(url: str) -> None:
    from monitor.store import Store, migrate
    from stabmon.wire import Point, RunCreate, RunUpdate

    migrate.upgrade(url)
    store = Store(url, pool_size=1)
    try:
        pid = store.ensure_project("history")
        run, _ = store.create_run(
            pid, RunCreate(id="hist-run", name="history run", config={"variant": "qk_norm", "lr": 3e-3})
        )
        shape = RunShape(steps=240, layers=2, diverge_at=200, seed=5)
        pts = [Point(step=p["step"], values=p["values"]) for p in points(shape)]
        # val_loss only every 50 steps, as an evaluation loop reports it.
        for p in pts:
            if p.step % 50 == 0 and p.step < 200:
                p.values["val_loss"] = 3.5
        store.write_points(pid, run.id, "all", pts)
        store.update_run(
            pid, run.id, RunUpdate(status="diverged", summary={"final_loss": "nan", "diverged_at": 200})
        )
        # Run ids are per project: another project's run of the same id, with other data.
        other = store.ensure_project("other")
        store.create_run(other, RunCreate(id="hist-run", name="other run", config={"lr": 1e-3}))
        store.write_points(
            other, "hist-run", "all", [Point(step=s, values={"loss": 1000.0}) for s in range(10)]
        )
    finally:
        store.dispose()


def _sql_targets() -> list[tuple[str, str]]:
    dash = json.loads(Path(DASHBOARD_JSON).read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            if "rawSql" in t:
                out.append((p["title"], t["rawSql"]))
    for v in dash["templating"]["list"]:
        if v.get("datasource", {}).get("uid") == "stabmon-postgres":
            out.append((f"variable {v['name']}", v["query"]))
    return out


def _substitute(sql: str, run_key: str) -> str:
    # Grafana's ${var:sqlstring} renders the value as a quoted SQL string.
    sql = sql.replace("${history_run:sqlstring}", "'" + run_key.replace("'", "''") + "'")
    assert "$" not in sql, f"unsubstituted Grafana variable in {sql!r}"
    return sql


def test_dashboard_sql_runs_as_the_read_only_role(history_db: dict) -> None:
    targets = _sql_targets()
    assert len(targets) >= 4
    eng = create_engine(history_db["reader_url"])
    try:
        with eng.connect() as conn:
            # The variable's choices name each run by project and id; its value is the run's
            # internal key, which the history panels filter on.
            choices = conn.execute(text(dict(targets)["variable history_run"])).mappings().all()
            key = {c["__text"]: c["__value"] for c in choices}["history run (history/hist-run)"]
            assert len(choices) == 2 and key != "hist-run"
            results = {
                title: conn.execute(text(_substitute(sql, key))).mappings().all() for title, sql in targets
            }
    finally:
        eng.dispose()
    runs = {r["project"]: r for r in results["Runs"]}
    assert sorted(runs) == ["history", "other"] and {r["id"] for r in runs.values()} == {"hist-run"}
    hist = runs["history"]
    assert hist["status"] == "diverged" and hist["lr"] == "0.003" and hist["diverged_at"] == "200"
    loss = results["Loss over steps (history)"]
    assert [r["step"] for r in loss] == list(range(240))
    assert all(r["loss"] is not None and r["loss"] < 1000 for r in loss if r["step"] < 200)
    assert all(r["loss"] is None for r in loss if r["step"] >= 200)  # NaN loss: a gap, not a number
    assert [r["step"] for r in loss if r["val_loss"] is not None] == [0, 50, 100, 150]
    logits = results["Max attention logit over layers (history)"]
    assert len(logits) == 240 and logits[150]["max_logit_over_layers"] > 0


def test_the_grafana_role_cannot_write(history_db: dict) -> None:
    eng = create_engine(history_db["reader_url"])
    try:
        with eng.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("DELETE FROM runs"))
    finally:
        eng.dispose()
