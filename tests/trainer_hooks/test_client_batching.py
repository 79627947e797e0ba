"""Batch formation: count, age and byte rules; record cleaning; bodies valid against the wire."""

import json

import pytest

from stabmon.wire import MAX_VALUES_PER_POINT, PointsIn
from trainer_hooks.client.batching import Batcher, EncodeStats, encode_points, seal


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _rec(step, n=3):
    return {"step": step, "rank": 0, "values": {f"layer.{i}.fc2.l2_mean": float(step + i) for i in range(n)}}


def test_seals_at_max_points_and_bodies_validate():
    b = Batcher(max_points=3, max_age_s=60)
    out = [s for step in range(7) for s in b.add(_rec(step))]
    assert [x.n_points for x in out] == [3, 3] and len(b) == 1
    last = b.seal_open()
    assert last.n_points == 1 and b.seal_open() is None
    for s in [*out, last]:
        body = PointsIn.model_validate_json(s.body)
        assert body.batch_id == s.batch_id and len(body.points) == s.n_points
    assert len({s.batch_id for s in [*out, last]}) == 3


def test_age_rule_uses_the_first_point_time():
    clk = _Clock()
    b = Batcher(max_points=1000, max_age_s=1.0, clock=clk)
    assert not b.due()
    b.add(_rec(0))
    clk.t += 0.6
    b.add(_rec(1))
    assert not b.due()
    clk.t += 0.5
    assert b.due()
    assert b.seal_open().n_points == 2 and not b.due()


def test_byte_rule_keeps_every_body_under_the_limit():
    b = Batcher(max_points=10_000, max_age_s=60, max_body_bytes=16_384)
    out = [s for step in range(300) for s in b.add(_rec(step, n=20))]
    out.append(b.seal_open())
    assert len(out) > 5
    assert all(len(s.body.encode()) <= 16_384 for s in out)
    steps = [p["step"] for s in out for p in json.loads(s.body)["points"]]
    assert steps == list(range(300))


def test_wide_points_are_split_and_bad_entries_counted():
    st = EncodeStats()
    vals = {f"k{i}": float(i) for i in range(MAX_VALUES_PER_POINT + 5)}
    vals.update({"bad key": 1.0, "x": "str", "flag": True})
    pts = [json.loads(p) for p in encode_points({"step": 4, "rank": 2, "values": vals}, st)]
    assert [len(p["values"]) for p in pts] == [MAX_VALUES_PER_POINT, 5]
    assert all(p["step"] == 4 and p["rank"] == 2 for p in pts)
    assert (st.invalid_values, st.split_points, st.invalid_records) == (3, 1, 0)


@pytest.mark.parametrize(
    "rec",
    [{"values": {}}, {"step": True, "values": {}}, {"step": -2, "values": {}}, {"step": 1, "values": [1]}, 7],
)
def test_malformed_records_are_dropped_and_counted(rec):
    st = EncodeStats()
    assert encode_points(rec, st) == [] and st.invalid_records == 1


def test_non_finite_and_numeric_like_values_are_encoded():
    class Scalar:  # e.g. a 0-d tensor or numpy scalar: anything float() accepts
        def __float__(self):
            return 2.5

    (p,) = encode_points(
        {"step": 0, "values": {"a": float("nan"), "b": float("-inf"), "c": Scalar()}}, EncodeStats()
    )
    assert json.loads(p)["values"] == {"a": "nan", "b": "-inf", "c": 2.5}


def test_seal_keeps_a_given_batch_id():
    assert seal(['{"step":0,"rank":0,"values":{}}'], batch_id="fixed").batch_id == "fixed"


@pytest.mark.parametrize(
    "kw", [{"max_points": 0}, {"max_points": 10_001}, {"max_age_s": -1}, {"max_body_bytes": 10}]
)
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        Batcher(**kw)
