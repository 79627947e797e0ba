"""``stabmon project detector``, and ``STABMON_DETECTOR`` checked when the collector starts, on
SQLite and PostgreSQL (the command runs in-process against the test database)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from monitor.server import settings_environment
from monitor.settings import Settings
from stabmon_cli import app
from stabmon_cli.project import parse_assignments


@pytest.fixture
def cli(store, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.delenv("STABMON_DETECTOR", raising=False)
    store.create_token("alpha")
    store.create_token("beta")
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):  # noqa: ANN202
        return runner.invoke(app, ["project", "detector", *args, "--db", store.url], env=env)

    return invoke


def rows(output: str) -> dict[str, tuple[str, str]]:
    """The key / value / from table the command prints."""
    lines = [line.split("\t") for line in output.splitlines() if line.count("\t") == 2]
    assert lines and lines[0] == ["key", "value", "from"], output
    return {key: (value, source) for key, value, source in lines[1:]}


def test_set_unset_clear_and_show(cli, store):
    r = cli("alpha")
    assert r.exit_code == 0 and "no detector overrides" in r.output
    r = cli("alpha", "--set", "loss_spike.z_warning=8", "--set", "entropy_collapse.max_severity=warning")
    assert r.exit_code == 0, r.output
    assert rows(r.output) == {
        "entropy_collapse.max_severity": ('"warning"', "project"),
        "loss_spike.z_warning": ("8.0", "project"),
    }
    pid = store.find_project("alpha").id
    assert store.project_detector(pid) == {
        "loss_spike": {"z_warning": 8.0},
        "entropy_collapse": {"max_severity": "warning"},
    }
    r = cli("alpha", "--unset", "loss_spike.z_warning", "--set", 'norm_growth.sites=["mlp"]', "--show")
    assert r.exit_code == 0, r.output
    effective = json.loads(r.output[r.output.index("\n{") :])
    assert effective["norm_growth"]["sites"] == ["mlp"] and effective["loss_spike"]["z_warning"] == 6.0
    assert store.project_detector(pid) == {
        "entropy_collapse": {"max_severity": "warning"},
        "norm_growth": {"sites": ["mlp"]},
    }
    assert store.project_detector(store.find_project("beta").id) == {}  # only the named project
    r = cli("alpha", "--clear")
    assert r.exit_code == 0 and "no detector overrides" in r.output and store.project_detector(pid) == {}


def test_collector_settings_are_listed_beneath_and_checked_with_the_project(cli):
    env = {"STABMON_DETECTOR": '{"logit_max": {"warning": 50}}'}
    r = cli("alpha", "--set", "logit_max.critical=100", env=env)  # below the built-in 300, above 50
    assert r.exit_code == 0, r.output
    assert rows(r.output) == {
        "logit_max.critical": ("100.0", "project"),
        "logit_max.warning": ("50.0", "collector"),
    }
    r = cli("alpha", "--set", "logit_max.critical=40", env=env)
    assert r.exit_code == 1
    assert "critical threshold 40.0 is below the warning threshold 50.0" in r.output


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["alpha", "--set", "loss_spike.zwarn=3"], 1, "unknown field 'zwarn' for detector rule 'loss_spike'"),
        (["alpha", "--set", "loss_spike.window=2"], 1, "loss_spike.window"),
        (["alpha", "--unset", "nosuch"], 1, "unknown detector override 'nosuch'"),
        (["nosuch", "--set", "message_series=2"], 1, "no project named 'nosuch'"),
        (["alpha", "--set", "message_series"], 2, "expected rule.field=VALUE"),
    ],
)
def test_bad_input_exits_non_zero_naming_the_problem_and_changes_nothing(cli, store, args, code, fragment):
    assert cli("alpha", "--set", "message_series=4").exit_code == 0
    r = cli(*args)
    assert r.exit_code == code and fragment in r.output, r.output
    assert store.project_detector(store.find_project("alpha").id) == {"message_series": 4}


def test_an_invalid_collector_setting_stops_the_command_and_the_server(cli):
    bad = {"STABMON_DETECTOR": '{"logit_max": {"warnin": 50}}'}
    r = cli("alpha", env=bad)
    assert r.exit_code == 2 and "unknown field 'warnin' for detector rule 'logit_max'" in r.output
    r = CliRunner().invoke(app, ["serve", "--port", "1"], env=bad)
    assert r.exit_code == 2 and "STABMON_DETECTOR" in r.output and "'warnin'" in r.output


def test_parse_assignments_reads_json_values_and_falls_back_to_strings():
    assert parse_assignments(["a.b=8", "a.c=null", "a.d=warning", 'a.e=["x"]', "a.f=1e3", "a.g="]) == {
        "a.b": 8,
        "a.c": None,
        "a.d": "warning",
        "a.e": ["x"],
        "a.f": 1000.0,
        "a.g": "",
    }


def test_worker_processes_read_the_collector_settings_back(monkeypatch):
    settings = Settings(
        db="sqlite:///x.db", detector={"loss_spike.z_warning": 7, "logit_max": {"sustain_warning": 3}}
    )
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings().detector == settings.detector
    assert Settings() == settings
