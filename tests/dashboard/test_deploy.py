"""The deployment files, validated as far as this machine allows without a Docker engine:
the compose file parses and everything it mounts or builds from exists; Prometheus'
configuration and alerting rules pass ``promtool`` (and the rules fire as intended on
synthetic series, ``promtool test rules``); Alertmanager's passes ``amtool``; Grafana's
provisioning is well-formed and every metric its dashboard queries is one a live collector
really exports; the container entrypoint bootstraps a token and starts the collector.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from stabmon.net import free_port
from tests._collector import Collector
from tests._services import require_service
from tests.dashboard.conftest import REPO

DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "stabmon.json"
PROMQL_METRIC = re.compile(r"\b(stabmon_[a-z_]+)\b")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _need(binary: str) -> str:
    path = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if path is None:
        require_service(binary, "not installed (scripts/services.sh installs it)")
    return path


# ---- docker-compose ---------------------------------------------------------------------------
def test_compose_has_the_whole_service() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "collector", "prometheus", "alertmanager", "grafana"}
    env = services["collector"]["environment"]
    assert env["STABMON_DB"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["STABMON_DB"]
    assert services["collector"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Prometheus must scrape the port the collector really listens on.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "stabmon-collector")
    assert job["static_configs"][0]["targets"] == [f"collector:{env['STABMON_PORT']}"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_every_compose_mount_and_build_input_exists() -> None:
    compose = _compose()
    named = set(compose.get("volumes") or {})
    mounts = 0
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith(("./", "/")):
                assert (REPO / source).resolve().exists(), f"{name} mounts missing {source}"
                mounts += 1
            else:
                assert source in named, f"{name} uses undeclared volume {source}"
        build = svc.get("build")
        if build:
            ctx = REPO / build.get("context", ".")
            dockerfile = ctx / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file()
            for line in dockerfile.read_text().splitlines():
                if line.startswith("COPY "):
                    for src in line.split()[1:-1]:
                        if "*" in src:  # an optional file (Docker copies what matches)
                            continue
                        assert (ctx / src).exists(), f"Dockerfile copies missing {src}"
    assert mounts >= 5


def test_collector_image_is_server_only() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '".[server]"' in dockerfile
    assert "trainer_hooks" not in [
        w.rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY ") for w in line.split()
    ]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "trainer_hooks" in ignored


# ---- Prometheus / Alertmanager --------------------------------------------------------------
@pytest.mark.prometheus
def test_promtool_checks_config_and_rules() -> None:
    promtool = _need("promtool")
    for args in (
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "prometheus" / "rules" / "stabmon.rules.yml")],
    ):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout + out.stderr


@pytest.mark.prometheus
def test_alerting_rules_fire_on_synthetic_series() -> None:
    """``promtool test rules``: a critical detector alert pages at once, a warning only after
    a minute, a dead collector after one; rejections and a stalled run are caught."""
    promtool = _need("promtool")
    out = subprocess.run(
        [promtool, "test", "rules", "stabmon.rules.test.yml"],
        cwd=DEPLOY / "prometheus" / "tests",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.prometheus
def test_amtool_checks_alertmanager_config() -> None:
    amtool = _need("amtool")
    out = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.prometheus
def test_alertmanager_routes_critical_alerts_to_the_critical_receiver() -> None:
    amtool = _need("amtool")
    cfg = str(DEPLOY / "alertmanager" / "alertmanager.yml")
    for labels, receiver in (
        (
            ["alertname=StabmonDivergenceCritical", "severity=critical", "project=a", "run=r1"],
            "stabmon-critical",
        ),
        (
            ["alertname=StabmonDivergenceWarning", "severity=warning", "project=a", "run=r1"],
            "stabmon-default",
        ),
    ):
        out = subprocess.run(
            [amtool, "config", "routes", "test", "--config.file", cfg, *labels],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip() == receiver


# ---- Grafana ------------------------------------------------------------------------------------
def _dashboard() -> dict:
    return json.loads(DASHBOARD_JSON.read_text())


def _panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_grafana_provisioning_is_consistent() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "stabmon.yml").read_text())
    uids = {d["uid"]: d["type"] for d in ds["datasources"]}
    assert uids == {"stabmon-prometheus": "prometheus", "stabmon-postgres": "grafana-postgresql-datasource"}
    provider = yaml.safe_load((prov / "dashboards" / "stabmon.yml").read_text())["providers"][0]
    # The provider's path is where compose mounts deploy/grafana/dashboards.
    grafana = _compose()["services"]["grafana"]
    mount = next(v for v in grafana["volumes"] if v.startswith("./deploy/grafana/dashboards:"))
    assert mount.split(":")[1] == provider["options"]["path"]

    dash = _dashboard()
    assert dash["uid"] and dash["title"]
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels}
    for needed in (
        "Output norm by layer and site (l2_mean)",
        "Attention logit max by layer",
        "Loss",
        "Active detector alerts",
    ):
        assert needed in titles
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] in uids, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] in uids
            assert t.get("expr") or t.get("rawSql"), p["title"]
        gp = p["gridPos"]
        assert gp["x"] >= 0 and gp["x"] + gp["w"] <= 24


def _prom_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", []) if "expr" in t]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def _exposition(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*?)\})?\s", line)
        assert m, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


def test_grafana_queries_name_only_metrics_a_live_collector_exports(seeded) -> None:  # noqa: ANN001
    """Every ``stabmon_*`` metric (and every label it is filtered or grouped by) in the
    dashboard and in the alerting rules is in the /metrics of a real collector that holds a
    running, alerting run."""
    text = httpx.get(seeded.collector.url + "/metrics", timeout=10).text
    exported = _exposition(text)
    assert "stabmon_alert_active{" in text and "stabmon_run_last_step{" in text
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "stabmon.rules.yml").read_text())
    exprs = _prom_exprs(_dashboard()) + [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set()
    for expr in exprs:
        names = PROMQL_METRIC.findall(expr)
        for name in names:
            assert name in exported, f"{name} (in {expr!r}) is not exported by the collector"
            used.add(name)
            # Labels in this metric's selector must exist on it.
            for sel in re.findall(re.escape(name) + r"\{([^}]*)\}", expr):
                for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!=|!~|=)", sel):
                    assert label in exported[name], f"{name} has no label {label!r} ({expr!r})"
        # Labels it aggregates or matches on (``by (...)``, ``on (...)``) must exist too.
        for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr) if names else []:
            for label in filter(None, (x.strip() for x in clause.split(","))):
                assert any(label in exported[n] for n in names), f"no metric has {label!r} ({expr!r})"
    for needed in ("stabmon_series_latest", "stabmon_alert_active", "stabmon_run_last_step"):
        assert needed in used
        # Run ids are unique per project only: every run-level metric names the project too.
        assert {"project", "run"} <= exported[needed]
    # The dashboard's layer/site legends rely on these labels.
    assert {"run", "layer", "site", "stat"} <= exported["stabmon_series_latest"]


# ---- the collector container's entrypoint --------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_entrypoint_bootstraps_a_token_and_serves(tmp_path: Path) -> None:
    port = free_port()
    token_file = tmp_path / "state" / "token"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "STABMON_DB": f"sqlite:///{tmp_path / 'c.db'}",
        "STABMON_HOST": "127.0.0.1",
        "STABMON_PORT": str(port),
        "STABMON_PROJECT": "compose",
        "STABMON_BOOTSTRAP_TOKEN_FILE": str(token_file),
        "STABMON_LOG_LEVEL": "warning",
    }
    script = str(DEPLOY / "collector" / "entrypoint.sh")
    col = Collector(env["STABMON_DB"], port=port, workdir=tmp_path, env=env, command=["/bin/sh", script])
    for attempt in range(2):  # the second start must reuse the token, not mint another
        try:
            col.start(timeout=60)
            token = token_file.read_text().strip()
            assert token.startswith("stm_")
            assert oct(token_file.stat().st_mode & 0o777) == "0o600"
            r = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/runs", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200, r.text
            if attempt == 0:
                first = token
            else:
                assert token == first
        finally:
            col.stop(timeout=15)
    listing = subprocess.run(
        [sys.executable, "-m", "stabmon_cli", "token", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = [line.split("\t") for line in listing.stdout.splitlines()[1:]]
    assert [r[1] for r in rows] == ["compose"], listing.stdout


@pytest.mark.integration
def test_collector_image_package_carries_the_dashboard(tmp_path: Path) -> None:
    """Build the wheel the Dockerfile installs, from exactly what it copies: the dashboard's
    templates and scripts and the migrations must be inside (they are package data of
    directories without ``__init__.py``), the training side must not, and the server extra
    must not pull torch."""
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, dest = line.split()[1:]
            if dest.startswith("/"):
                continue  # the entrypoint script, not part of the package
            for s in sources:
                if "*" in s:
                    for match in REPO.glob(s):
                        shutil.copy(match, src / match.name)
                    continue
                path = REPO / s
                if path.is_dir():
                    shutil.copytree(path, src / s, ignore=shutil.ignore_patterns("__pycache__"))
                elif path.exists():
                    shutil.copy(path, src / s)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "w"),
            ".",
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "w").glob("stabmon-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for needed in (
        "dashboard/templates/page.html",
        "dashboard/templates/run.html",
        "dashboard/static/run.js",
        "dashboard/static/common.js",
        "dashboard/static/stabmon.css",
        "monitor/api/app.py",
        "migrations/env.py",
        "stabmon_cli/__init__.py",  # the entrypoint runs python -m stabmon_cli
    ):
        assert needed in names, needed
    assert any(n.startswith("migrations/versions/") and n.endswith(".py") for n in names)
    assert not any(n.startswith("trainer_hooks/") for n in names)
    server = [
        ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:") and 'extra == "server"' in ln
    ]
    assert any(ln.startswith("Requires-Dist: plotly") for ln in server)
    assert not any("torch" in ln for ln in server)


def test_grafana_logit_thresholds_are_the_detectors_defaults() -> None:
    """The dashed lines on Grafana's logit panel are where the collector really alerts."""
    from stabmon.detect import DetectorConfig

    panel = next(p for p in _panels(_dashboard()) if p["title"] == "Attention logit max by layer")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    d = DetectorConfig().logit_max
    assert [s["value"] for s in steps if s["value"] is not None] == [d.warning, d.critical]
    assert f"{d.warning:g}" in panel["description"] and f"{d.critical:g}" in panel["description"]
