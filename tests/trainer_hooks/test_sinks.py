"""Local sinks: MemorySink, JsonlSink (+ read_jsonl), NullSink, FanoutSink, open_sink."""

import math

import pytest

from trainer_hooks.client import (
    FanoutSink,
    JsonlSink,
    MemorySink,
    NullSink,
    Sink,
    open_sink,
    read_jsonl,
)

NONFINITE = {"loss": float("nan"), "layer.0.attn.logit_max": float("inf"), "grad_norm": float("-inf")}


def test_every_sink_satisfies_the_protocol(tmp_path):
    for s in (MemorySink(), JsonlSink(tmp_path / "x.jsonl"), NullSink(), FanoutSink()):
        assert isinstance(s, Sink)
        s.close()


def test_memory_sink_copies_records_and_exposes_series():
    s = MemorySink()
    vals = {"loss": 2.5, "layer.1.fc2.l2_mean": 3}
    s.write({"step": 0, "values": vals})
    vals["loss"] = 99.0  # the caller reusing its dict must not rewrite history
    s.write({"step": 1, "rank": 1, "values": {"loss": float("nan")}})
    assert s.records[0] == {"step": 0, "rank": 0, "values": {"loss": 2.5, "layer.1.fc2.l2_mean": 3.0}}
    assert s.series("loss", rank=0) == [(0, 2.5)]
    assert math.isnan(s.series("loss")[1][1])


def test_memory_sink_never_raises_on_garbage():
    s = MemorySink()
    s.write({"values": {}})  # no step
    s.write({"step": 1, "values": {"x": "abc"}})
    s.write("not a dict")  # type: ignore[arg-type]
    assert s.records == []
    s.close()
    s.write({"step": 2, "values": {"x": 1.0}})
    assert s.records == []


def test_jsonl_round_trips_non_finite(tmp_path):
    p = tmp_path / "sub" / "run.jsonl"
    s = JsonlSink(p)
    for step in range(3):
        s.write({"step": step, "rank": 0, "values": {**NONFINITE, "lr": 1e-3 * step}})
    s.close()
    text = p.read_text()
    assert '"nan"' in text and '"inf"' in text and '"-inf"' in text and "NaN" not in text
    recs = read_jsonl(p)
    assert [r["step"] for r in recs] == [0, 1, 2]
    v = recs[2]["values"]
    assert math.isnan(v["loss"]) and v["layer.0.attn.logit_max"] == math.inf and v["grad_norm"] == -math.inf
    assert v["lr"] == pytest.approx(2e-3)


def test_jsonl_flush_makes_lines_visible_and_appends_across_instances(tmp_path):
    p = tmp_path / "run.jsonl"
    s = JsonlSink(p, flush_every=1000)
    s.write({"step": 0, "values": {"loss": 1.0}})
    s.flush()
    assert len(read_jsonl(p)) == 1
    s.close()
    s2 = JsonlSink(p)
    s2.write({"step": 1, "values": {"loss": 0.5}})
    s2.close()
    assert [r["step"] for r in read_jsonl(p)] == [0, 1]


def test_read_jsonl_skips_a_torn_last_line_but_not_corruption(tmp_path):
    p = tmp_path / "run.jsonl"
    p.write_text('{"step":0,"rank":0,"values":{"loss":1.0}}\n{"step":1,"rank":0,"val')
    assert [r["step"] for r in read_jsonl(p)] == [0]
    p.write_text('{"step":0,"rank":0,"values":{"loss":"NaN"}}\n{"step":1,"rank":0,"values":{}}\n')
    with pytest.raises(ValueError, match=":1:"):
        read_jsonl(p)


def test_jsonl_skips_unencodable_records(tmp_path):
    p = tmp_path / "run.jsonl"
    s = JsonlSink(p)
    s.write({"step": 0, "values": {"loss": object()}})
    s.write({"step": 1, "values": {"loss": 1.0}})
    s.close()
    assert [r["step"] for r in read_jsonl(p)] == [1]


def test_jsonl_rejects_bad_flush_every(tmp_path):
    with pytest.raises(ValueError, match="flush_every"):
        JsonlSink(tmp_path / "x.jsonl", flush_every=0)


class _Broken:
    def write(self, record):
        raise RuntimeError("boom")

    def flush(self, timeout=None):
        raise RuntimeError("boom")

    def close(self):
        raise RuntimeError("boom")


def test_fanout_writes_everywhere_and_isolates_a_failing_sink(tmp_path):
    a, b = MemorySink(), MemorySink()
    f = FanoutSink(a, _Broken(), b)
    f.write({"step": 5, "values": {"loss": 1.0}})
    f.flush(1.0)
    f.close()
    assert a.records == b.records == [{"step": 5, "rank": 0, "values": {"loss": 1.0}}]
    assert a.closed and b.closed


def test_open_sink_picks_the_sink_from_options(tmp_path):
    assert isinstance(open_sink(), NullSink)
    j = open_sink(jsonl=tmp_path / "r.jsonl")
    assert isinstance(j, JsonlSink)
    j.close()
    both = open_sink(
        collector="http://127.0.0.1:9", jsonl=tmp_path / "r2.jsonl", spool_dir=tmp_path / "spool"
    )
    assert isinstance(both, FanoutSink) and len(both.sinks) == 2
    both.sinks[1].close(timeout=0.1)
    both.close()
