"""The wire contract: key grammar and non-finite encoding."""

import math

import pytest
from pydantic import ValidationError

from stabmon.wire import PointsIn, decode_value, encode_value, parse_key


def test_layer_key_parses():
    k = parse_key("layer.3.fc2.l2_mean")
    assert (k.layer, k.site, k.stat) == (3, "fc2", "l2_mean")


def test_run_level_key_parses():
    k = parse_key("grad_norm")
    assert (k.layer, k.site, k.stat) == (None, None, "grad_norm")


@pytest.mark.parametrize("bad", ["", "1abc", "layer..x", "a b", "a.", "x" * 129, "é"])
def test_bad_keys_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_key(bad)


@pytest.mark.parametrize("x", [0.0, -1.5, 1e300, float("nan"), float("inf"), float("-inf")])
def test_non_finite_round_trip(x):
    y = decode_value(encode_value(x))
    assert (math.isnan(x) and math.isnan(y)) or x == y


def test_points_payload_accepts_non_finite_strings_and_rejects_others():
    ok = PointsIn.model_validate(
        {"batch_id": "b1", "points": [{"step": 0, "values": {"loss": "nan", "lr": 1e-3}}]}
    )
    assert ok.points[0].values["loss"] == "nan"
    for bad in ("NaN", "1.0", None, True):
        with pytest.raises(ValidationError):
            PointsIn.model_validate({"batch_id": "b", "points": [{"step": 0, "values": {"loss": bad}}]})
    with pytest.raises(ValidationError):
        PointsIn.model_validate({"batch_id": "b", "points": [{"step": -1, "values": {}}]})
