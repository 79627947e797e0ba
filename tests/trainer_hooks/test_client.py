"""The collector client against a real (minimal) HTTP collector: delivery exactly once across
outages, restarts and lost answers; retries; rejection; alerts; never blocking the writer."""

import json
import logging
import math
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.trainer_hooks._collector_fake import TOKEN, FakeCollector, make_alert, same, wait_until
from trainer_hooks.client import Client, ClientConfig, RunInfo, SpoolInUseError

FAST = {
    "flush_interval_s": 0.05,
    "backoff_initial_s": 0.02,
    "backoff_max_s": 0.2,
    "poll_interval_s": 0.01,
    "read_timeout_s": 5.0,
    "flush_timeout_s": 15.0,
}


@pytest.fixture
def collector():
    fc = FakeCollector()
    yield fc
    fc.stop()


def _client(fc, tmp_path, **kw):
    opts = {**FAST, **kw}
    run = opts.pop("run", RunInfo(name="t", config={"variant": "baseline"}))
    on_alert = opts.pop("on_alert", None)
    return Client(fc.url, token=TOKEN, run=run, on_alert=on_alert, spool_dir=tmp_path / "spool", **opts)


def _record(step, rank=0):
    v = {"loss": 3.0 / (step + 1), "layer.0.fc2.l2_mean": float(step), "layer.1.attn.logit_max": step * 1.5}
    if step % 7 == 3:
        v["loss"] = float("nan")
    if step % 11 == 5:
        v["layer.1.attn.logit_max"] = float("inf")
    if step % 13 == 6:
        v["grad_norm"] = float("-inf")
    return {"step": step, "rank": rank, "values": v}


def _expected(records):
    return {(k, r["step"], r["rank"]): v for r in records for k, v in r["values"].items()}


def _assert_exactly_once(fc, records):
    got, want = fc.series(), _expected(records)
    assert got.keys() == want.keys()
    bad = [k for k in want if not same(got[k], want[k])]
    assert not bad, bad[:5]


def test_delivers_everything_with_non_finite_values_and_auth(collector, tmp_path):
    c = _client(collector, tmp_path)
    recs = [_record(s) for s in range(50)]
    for r in recs:
        c.write(r)
    assert c.flush(10)
    _assert_exactly_once(collector, recs)
    got = collector.series()
    assert math.isnan(got[("loss", 3, 0)]) and got[("layer.1.attn.logit_max", 5, 0)] == math.inf
    assert got[("grad_norm", 6, 0)] == -math.inf
    assert set(collector.auth_headers) == {f"Bearer {TOKEN}"}
    assert collector.runs[c.run_id]["config"] == {"variant": "baseline"}
    s = c.stats
    assert (s.records_written, s.points_spooled, s.points_acked, s.spooled_points) == (50, 50, 50, 0)
    assert s.registered and s.rejected_batches == 0
    c.close()
    assert collector.updates == [{"status": "finished"}]
    assert not c.spool_path.exists()


def test_outage_mid_stream_every_point_arrives_exactly_once_in_order(collector, tmp_path):
    c = _client(collector, tmp_path, max_batch_points=7)
    recs = [_record(s, rank) for s in range(300) for rank in (0, 1)]
    for r in recs[:200]:
        c.write(r)
    assert wait_until(lambda: c.stats.points_acked > 50)
    collector.stop()
    for r in recs[200:450]:
        c.write(r)
    assert wait_until(lambda: c.stats.retries >= 3 and c.stats.spooled_points > 0)
    assert "unavailable" in c.stats.last_error
    collector.start()  # same port, same store: a restarted collector
    for r in recs[450:]:
        c.write(r)
    assert c.flush(15)
    _assert_exactly_once(collector, recs)
    steps = [(p["step"], p["rank"]) for p in collector.points()]
    assert steps == [(r["step"], r["rank"]) for r in recs]  # replayed in write order
    c.close()


def test_retries_503_with_retry_after_and_connection_drops(collector, tmp_path):
    c = _client(collector, tmp_path)
    collector.fail_next, collector.retry_after = 3, "0.05"
    c.write(_record(0))
    assert c.flush(10)
    collector.drop = True
    c.write(_record(1))
    assert wait_until(lambda: c.stats.retries >= 5)
    collector.drop = False
    assert c.flush(10)
    _assert_exactly_once(collector, [_record(0), _record(1)])
    c.close()


def test_lost_answer_is_resent_and_acknowledged_as_duplicate(collector, tmp_path):
    c = _client(collector, tmp_path)
    c.write(_record(0))
    assert c.flush(10)
    collector.lose_answer_next = 1
    c.write(_record(1))
    assert c.flush(10)
    assert c.stats.duplicates == 1 and c.stats.batches_acked == 2
    _assert_exactly_once(collector, [_record(0), _record(1)])
    c.close()


def test_registration_waits_for_a_collector_that_is_down_at_start(collector, tmp_path):
    collector.stop()
    c = _client(collector, tmp_path)  # returns at once, with nothing listening
    recs = [_record(s) for s in range(20)]
    for r in recs:
        c.write(r)
    assert wait_until(lambda: c.stats.retries >= 2 and c.stats.spooled_points == 20)
    assert not c.stats.registered
    collector.start()
    assert c.flush(10)
    assert c.stats.registered
    _assert_exactly_once(collector, recs)
    c.close()


def test_collector_that_forgot_the_run_gets_it_registered_again(collector, tmp_path):
    c = _client(collector, tmp_path)
    c.write(_record(0))
    assert c.flush(10)
    collector.runs.clear()  # e.g. a collector restarted on a fresh database
    c.write(_record(1))
    assert c.flush(10)
    assert c.run_id in collector.runs and c.stats.rejected_batches == 0
    _assert_exactly_once(collector, [_record(0), _record(1)])
    c.close()


def test_rejected_batches_go_to_the_rejected_file_and_delivery_goes_on(collector, tmp_path, caplog):
    collector.reject = lambda body: (
        "limit: poison" if any("poison" in p["values"] for p in body["points"]) else None
    )
    c = _client(collector, tmp_path)
    c.write(_record(0))
    assert c.flush(10)
    c.write({"step": 1, "rank": 0, "values": {"poison": 1.0}})
    assert c.flush(10)
    c.write(_record(2))
    assert c.flush(10)
    s = c.stats
    assert (s.rejected_batches, s.rejected_points, s.points_acked) == (1, 1, 2)
    assert "422" in s.last_error and "limit: poison" in s.last_error
    rej = [json.loads(line) for line in c.rejected_path.read_text().splitlines()]
    assert len(rej) == 1 and rej[0]["status"] == 422
    assert rej[0]["body"]["points"][0]["values"] == {"poison": 1.0}
    _assert_exactly_once(collector, [_record(0), _record(2)])
    c.close()


def test_bad_token_is_fatal_logged_once_and_never_printed(collector, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    c = Client(collector.url, token="wrong-secret-xyz", spool_dir=tmp_path / "s", **FAST)
    c.write(_record(0))
    assert wait_until(lambda: c.stats.last_error is not None and "401" in c.stats.last_error)
    assert not c.flush(0.5)
    n = collector.requests
    c.close(timeout=0.5)
    assert collector.requests == n  # no retry storm, no PATCH
    assert "wrong-secret-xyz" not in caplog.text and "registration refused" in caplog.text
    assert c.spool_path.exists()  # the points are kept for a corrected client


def test_alerts_reach_on_alert_once_per_change_and_callback_errors_are_contained(collector, tmp_path):
    seen = []

    def on_alert(a):
        seen.append((a.id, a.severity, a.status))
        if a.severity == "critical":
            raise RuntimeError("handler bug")

    c = _client(collector, tmp_path, on_alert=on_alert)
    collector.alerts = [make_alert(1, c.run_id)]
    for s in range(3):
        c.write(_record(s))
        assert c.flush(10)
    assert seen == [(1, "warning", "open")]
    assert [a.id for a in c.alerts] == [1] and c.alerts[0].message.startswith("layer.0.fc2")
    collector.alerts = [make_alert(1, c.run_id, "critical"), make_alert(2, c.run_id)]
    c.write(_record(3))
    assert c.flush(10)
    assert seen[1:] == [(1, "critical", "open"), (2, "warning", "open")]
    assert c.stats.alert_callback_errors == 1
    collector.alerts = [make_alert(2, c.run_id, status="resolved")]
    c.write(_record(4))
    assert c.flush(10)
    assert seen[-1] == (2, "warning", "resolved") and c.alerts == []
    assert c.stats.points_acked == 5  # the raising handler did not stop delivery
    c.close()


def test_write_never_blocks_while_the_collector_hangs(collector, tmp_path):
    c = _client(collector, tmp_path)
    collector.hang.set()
    c.write(_record(0))
    assert wait_until(lambda: collector.requests >= 1)  # the sender is stuck in a request
    done = threading.Event()

    def writer():
        for s in range(1, 1001):
            c.write(_record(s))
        done.set()

    threading.Thread(target=writer, daemon=True).start()
    assert done.wait(20)
    assert collector.hang.is_set() and c.stats.points_acked == 0  # still hanging
    assert c.stats.records_written == 1001
    collector.hang.clear()
    collector.release.set()
    assert c.flush(15)
    _assert_exactly_once(collector, [_record(s) for s in range(1001)])
    c.close()


def test_batches_respect_point_and_byte_limits(collector, tmp_path):
    c = _client(collector, tmp_path, max_batch_points=30, max_body_bytes=8192, flush_interval_s=5.0)
    recs = [
        {"step": s, "rank": 0, "values": {f"layer.{i}.qkv.l2_mean": s + i / 10 for i in range(12)}}
        for s in range(200)
    ]
    for r in recs:
        c.write(r)
    assert c.flush(10)
    sizes = [len(collector.batches[b]) for b in collector.order]
    bodies = [
        len(json.dumps({"batch_id": b, "points": collector.batches[b]}, separators=(",", ":")))
        for b in collector.order
    ]
    assert max(sizes) <= 30 and max(bodies) <= 8192 and sum(sizes) == 200
    _assert_exactly_once(collector, recs)
    c.close()


def test_too_large_batches_are_split_when_the_collector_limit_is_lower(collector, tmp_path):
    collector.max_body = 6000
    c = _client(collector, tmp_path, flush_interval_s=5.0)
    recs = [_record(s) for s in range(120)]  # one ~13 kB batch
    for r in recs:
        c.write(r)
    assert c.flush(10)
    assert c.stats.rejected_batches == 0 and len(collector.order) >= 3
    _assert_exactly_once(collector, recs)
    assert [p["step"] for p in collector.points()] == list(range(120))
    c.close()


def test_invalid_keys_and_values_are_dropped_and_counted_not_raised(collector, tmp_path):
    c = _client(collector, tmp_path)
    c.write({"step": 0, "values": {"loss": 1.0, "bad key": 2.0, "lr": "fast", "ok.x": True}})
    c.write({"step": -1, "values": {"loss": 1.0}})
    c.write({"values": {}})
    c.write(None)  # type: ignore[arg-type]
    big = {f"k.v{i}": float(i) for i in range(2100)}
    c.write({"step": 1, "values": big})
    assert c.flush(10)
    s = c.stats
    assert (s.invalid_values, s.invalid_records) == (3, 3)
    got = collector.series()
    assert got[("loss", 0, 0)] == 1.0 and ("bad key", 0, 0) not in got
    assert sum(1 for k in got if k[1] == 1) == 2100  # split into two points, nothing lost
    c.close()


def test_full_spool_thins_old_steps_during_a_long_outage(collector, tmp_path):
    collector.stop()
    c = _client(collector, tmp_path, max_batch_points=10, spool_max_bytes=20_000)
    recs = [_record(s) for s in range(1000)]
    for r in recs:
        c.write(r)
    assert wait_until(lambda: c.stats.points_spooled == 1000)
    s = c.stats
    assert s.thinned_points > 0 and s.spooled_bytes <= 20_000
    assert s.spooled_points + s.thinned_points == 1000
    collector.start()
    assert c.flush(15)
    got_steps = sorted({p["step"] for p in collector.points()})
    assert len(got_steps) == 1000 - s.thinned_points
    assert got_steps[-10:] == list(range(990, 1000))  # the latest are never dropped
    c.close()


@pytest.mark.integration
def test_leftover_spool_from_an_exited_process_is_replayed_by_a_new_client(collector, tmp_path):
    collector.stop()
    script = textwrap.dedent(
        f"""
        from trainer_hooks.client import Client, RunInfo
        c = Client({collector.url!r}, token={TOKEN!r}, run=RunInfo(name="t", id="run-left"),
                   spool_dir={str(tmp_path / "spool")!r}, flush_interval_s=0.05,
                   backoff_initial_s=0.02, atexit_timeout_s=0.5, spool_tag="0")
        for s in range(40):
            c.write({{"step": s, "rank": 0, "values": {{"loss": float(s), "x": float("nan")}}}})
        # no close(): the interpreter exit flushes what it can within atexit_timeout_s
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=str(tmp_path))
    assert (tmp_path / "spool" / "run-left.0.spool.jsonl").stat().st_size > 0
    collector.start()
    c = _client(collector, tmp_path, run=RunInfo(name="t", id="run-left"), spool_tag="0")
    c.write({"step": 40, "rank": 0, "values": {"loss": 40.0, "x": float("nan")}})
    assert c.flush(10)
    assert [p["step"] for p in collector.points()] == list(range(41))
    assert all(p["values"]["x"] == "nan" for p in collector.points())
    c.close()


def test_close_flushes_records_status_and_summary_and_is_idempotent(collector, tmp_path):
    c = _client(collector, tmp_path, flush_interval_s=60.0)
    for s in range(10):
        c.write(_record(s))
    c.close(status="diverged", summary={"diverged_at": 9})
    c.close()
    c.write(_record(99))  # ignored after close
    _assert_exactly_once(collector, [_record(s) for s in range(10)])
    assert collector.updates == [{"status": "diverged", "summary": {"diverged_at": 9}}]


def test_close_with_the_collector_down_keeps_points_in_the_spool(collector, tmp_path):
    collector.stop()
    c = _client(collector, tmp_path)
    for s in range(5):
        c.write(_record(s))
    c.close(timeout=0.3)
    assert c.stats.spooled_points == 5 and c.spool_path.stat().st_size > 0


def test_status_at_a_close_during_an_outage_is_replayed_after_the_points(collector, tmp_path):
    collector.stop()
    run = RunInfo(name="t", id="closed-in-outage")
    c = _client(collector, tmp_path, run=run, spool_tag="0")
    recs = [_record(s) for s in range(30)]
    for r in recs:
        c.write(r)
    c.close(status="diverged", summary={"diverged_at": 29, "final_loss": 7.5}, timeout=0.3)
    assert c.stats.status_pending and c.stats.spooled_points == 30 and collector.updates == []
    collector.start()
    # A later process with the same run id: it replays what the first one left, and its own
    # close(status=None) adds no update of its own.
    replay = _client(collector, tmp_path, run=run, spool_tag="0")
    assert replay.flush(10), replay.stats
    replay.close(status=None)
    assert collector.updates == [{"status": "diverged", "summary": {"diverged_at": 29, "final_loss": 7.5}}]
    assert collector.points_before_update == [30]  # the update came after every point
    assert not replay.stats.status_pending and not replay.spool_path.exists()
    _assert_exactly_once(collector, recs)


def test_status_update_for_a_run_the_collector_forgot_registers_it_again(collector, tmp_path):
    c = _client(collector, tmp_path)
    c.write(_record(0))
    assert c.flush(10)
    collector.runs.clear()  # e.g. a collector restarted on a fresh database
    c.close(status="finished", summary={"steps": 1})
    assert c.run_id in collector.runs
    assert collector.updates == [{"status": "finished", "summary": {"steps": 1}}]
    assert not c.stats.status_pending and c.stats.rejected_batches == 0


def test_bad_configuration_fails_fast_with_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="unknown settings"):
        Client("http://127.0.0.1:9", spool_dir=tmp_path, flush_every=3)
    with pytest.raises(ValueError, match="http"):
        Client("127.0.0.1:9", spool_dir=tmp_path)
    with pytest.raises(ValueError):
        Client("http://127.0.0.1:9", run=RunInfo(name="x", id="bad id!"), spool_dir=tmp_path)
    with pytest.raises(ValueError, match="flush_interval_s"):
        ClientConfig(flush_interval_s=0)


def test_one_spool_per_process_of_a_run(collector, tmp_path, monkeypatch):
    run = RunInfo(name="t", id="shared-run")
    a = _client(collector, tmp_path, run=run)
    with pytest.raises(SpoolInUseError, match="in use"):
        _client(collector, tmp_path, run=run)
    monkeypatch.setenv("RANK", "1")  # torchrun gives every rank its own spool file
    b = _client(collector, tmp_path, run=run)
    assert b.spool_path.name == "shared-run.1.spool.jsonl" != a.spool_path.name
    b.close()
    a.close()


def test_context_manager_marks_a_crashed_run_stopped(collector, tmp_path):
    with pytest.raises(RuntimeError), _client(collector, tmp_path) as c:
        c.write(_record(0))
        raise RuntimeError("training crashed")
    assert collector.updates == [{"status": "stopped"}]
    _assert_exactly_once(collector, [_record(0)])
