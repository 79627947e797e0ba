"""The pieces every framework callback shares: alert handling, sink choice, JSON-safe configs."""

from __future__ import annotations

import enum
import json
import logging
import math
import threading

import pytest
import torch

from stabmon.wire import AlertPublic
from tests.integrations._tiny import critical_alert
from trainer_hooks.client import Client, MemorySink, NullSink
from trainer_hooks.integrations import session
from trainer_hooks.integrations.run import MonitoredRun


def _open(**overrides):
    kwargs = dict(
        url=None,
        token=None,
        sink=None,
        run_name="r",
        project=None,
        config={},
        run_id=None,
        alert_switch=session.AlertSwitch(),
        reduce=False,
    )
    kwargs.update(overrides)
    return session.resolve_sink(**kwargs)


def test_log_mode_logs_and_never_stops(caplog):
    switch = session.AlertSwitch("log")
    with caplog.at_level(logging.WARNING, logger="stabmon.integrations"):
        switch(critical_alert(7))
    assert not switch.stop_requested
    assert "loss_non_finite at step 7" in caplog.text and "critical" in caplog.text


def test_stop_mode_stops_on_open_critical_only():
    switch = session.AlertSwitch("stop")
    switch({**critical_alert(3), "severity": "warning"})
    switch({**critical_alert(4), "status": "resolved"})
    assert not switch.stop_requested
    switch(AlertPublic.model_validate(critical_alert(5)))  # the client hands AlertPublic objects
    assert switch.stop_requested
    assert "step 5" in switch.reason


def test_stop_on_warning_when_asked():
    switch = session.AlertSwitch("stop", stop_on=("warning", "critical"))
    switch({**critical_alert(3), "severity": "warning"})
    assert switch.stop_requested


def test_callable_is_called_and_may_request_a_stop():
    seen = []
    switch = session.AlertSwitch(lambda a: seen.append(a["step"]))
    switch(critical_alert(1))
    assert seen == [1] and not switch.stop_requested
    switch = session.AlertSwitch(lambda a: "stop" if a["rule"] == "loss_non_finite" else None)
    switch(critical_alert(2, rule="grad_norm_spike"))
    assert not switch.stop_requested
    switch(critical_alert(3))
    assert switch.stop_requested


def test_stop_request_from_another_thread_is_seen():
    switch = session.AlertSwitch("stop")
    t = threading.Thread(target=switch, args=(critical_alert(9),))
    t.start()
    t.join()
    assert switch.stop_requested


@pytest.mark.parametrize("bad", ["halt", 3, {"mode": "stop"}])
def test_bad_on_alert_is_a_clear_error(bad):
    with pytest.raises((ValueError, TypeError), match="on_alert"):
        session.AlertSwitch(bad)


def test_bad_stop_on_is_a_clear_error():
    with pytest.raises(ValueError, match="stop_on"):
        session.AlertSwitch("stop", stop_on=("fatal",))


def test_explicit_sink_is_the_callers(monkeypatch):
    monkeypatch.setenv(session.URL_ENV, "http://127.0.0.1:9")
    sink = MemorySink()
    assert _open(sink=sink) == (sink, False)


def test_sink_and_url_together_are_refused():
    with pytest.raises(ValueError, match="FanoutSink"):
        MonitoredRun("http://127.0.0.1:9", sink=MemorySink())


def test_no_collector_means_a_null_sink(monkeypatch, caplog):
    monkeypatch.delenv(session.URL_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="stabmon.integrations"):
        sink, owned = _open()
    assert isinstance(sink, NullSink) and owned
    assert session.URL_ENV in caplog.text


def test_url_from_the_environment_builds_a_client(monkeypatch, tmp_path):
    monkeypatch.setenv(session.URL_ENV, "http://127.0.0.1:9")
    monkeypatch.setenv(session.TOKEN_ENV, "t0k")
    switch = session.AlertSwitch()
    sink, owned = _open(
        run_name="hf-run",
        config={"lr": 0.1},
        run_id="abc123",
        alert_switch=switch,
        client_options={"spool_dir": tmp_path, "connect_timeout_s": 0.1},
    )
    try:
        assert isinstance(sink, Client) and owned
        assert sink.run_id == "abc123"
        assert sink._run_create["name"] == "hf-run" and sink._run_create["config"] == {"lr": 0.1}
    finally:
        sink.close(status=None, timeout=0.2)


def test_json_safe_makes_any_config_storable():
    class Color(enum.Enum):
        RED = "red"

    cfg = {
        "lr": 1e-3,
        "eps": float("nan"),
        "clip": float("inf"),
        "floor": -math.inf,
        "mode": Color.RED,
        "dtype": torch.bfloat16,
        "betas": (0.9, 0.95),
        "scalar": torch.tensor(2.5),
        "nested": {1: {"x": [1, None, True]}},
        "fn": print,
    }
    safe = session.json_safe(cfg)
    json.dumps(safe, allow_nan=False)
    assert safe["lr"] == 1e-3 and safe["eps"] == "nan" and safe["clip"] == "inf" and safe["floor"] == "-inf"
    assert safe["mode"] == "red" and safe["dtype"] == "torch.bfloat16" and safe["betas"] == [0.9, 0.95]
    assert safe["scalar"] == 2.5 and safe["nested"] == {"1": {"x": [1, None, True]}}
    assert "print" in safe["fn"]


def test_agree_without_a_process_group_is_the_local_flag():
    assert session.agree(True) is True and session.agree(False) is False
    assert len(session.shared_run_id()) == 32


def test_grad_norm_and_lr_helpers():
    layer = torch.nn.Linear(3, 2)
    assert session.grad_norm(layer.parameters()) is None
    layer(torch.ones(4, 3)).sum().backward()
    expected = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()
    torch.testing.assert_close(session.grad_norm(layer.parameters()), expected)
    assert session.current_lr(torch.optim.SGD(layer.parameters(), lr=0.25)) == 0.25
    assert session.current_lr(object()) is None


def test_under_ddp_with_reduce_only_rank_0_builds_a_client(monkeypatch, tmp_path):
    monkeypatch.setattr(session, "distributed", lambda: True)
    monkeypatch.setattr(session, "shared_run_id", lambda: "shared")
    options = {"spool_dir": tmp_path, "connect_timeout_s": 0.1}
    monkeypatch.setattr(session, "rank", lambda: 1)
    sink, owned = _open(url="http://127.0.0.1:9", reduce=True, client_options=options)
    assert isinstance(sink, NullSink) and owned
    # Without reduce every rank sends its own records, to the same run.
    sink, _ = _open(url="http://127.0.0.1:9", reduce=False, client_options={**options, "spool_tag": "1"})
    try:
        assert isinstance(sink, Client) and sink.run_id == "shared"
    finally:
        sink.close(status=None, timeout=0.2)
    monkeypatch.setattr(session, "rank", lambda: 0)
    sink, _ = _open(url="http://127.0.0.1:9", reduce=True, client_options=options)
    try:
        assert isinstance(sink, Client) and sink.run_id == "shared"
    finally:
        sink.close(status=None, timeout=0.2)


def test_the_stop_flag_travels_on_the_host_even_over_nccl(monkeypatch):
    created = []
    monkeypatch.setattr(session, "_CPU_GROUPS", {})
    monkeypatch.setattr(
        session.dist, "new_group", lambda backend: created.append(backend) or f"group:{backend}"
    )
    for backend, expected in [("gloo", None), ("cpu:gloo,cuda:nccl", None), ("mpi", None)]:
        monkeypatch.setattr(session.dist, "get_backend", lambda b=backend: b)
        assert session.cpu_group() is expected
    monkeypatch.setattr(session.dist, "get_backend", lambda: "nccl")
    assert session.cpu_group() == "group:gloo" and session.cpu_group() == "group:gloo"
    assert created == ["gloo"]  # made once, then reused
