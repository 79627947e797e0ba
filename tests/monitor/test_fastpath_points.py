"""The ingest endpoint's body fast path (``PointsIn`` validated from the raw bytes in pydantic's
JSON mode) against the reference it replaces: a FastAPI route with a plain ``body: PointsIn``
parameter. For any body and content type both must accept the same batches with the same
values, and reject the rest with the same status and the same error list."""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.api.routes.points import _inline_schema, parse_points, points_body
from stabmon.wire import PointsIn


def _dump(body: PointsIn) -> dict:
    """The parsed batch with floats made comparable (NaN != NaN) and exact (repr, sign of 0)."""
    return {
        "batch_id": body.batch_id,
        "points": [
            {
                "step": p.step,
                "rank": p.rank,
                "values": {k: (type(v).__name__, repr(v)) for k, v in p.values.items()},
            }
            for p in body.points
        ],
    }


def _app() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, e: RequestValidationError) -> JSONResponse:
        errs = [{"loc": list(x["loc"]), "msg": x["msg"], "type": x["type"]} for x in e.errors()]
        return JSONResponse({"detail": errs}, status_code=422)

    @app.post("/reference")
    def reference(body: PointsIn):
        return _dump(body)

    @app.post("/fast")
    def fast(body: Annotated[PointsIn, Depends(points_body)]):
        return _dump(body)

    return app


CLIENT = TestClient(_app())

finite = st.floats(allow_nan=False, allow_infinity=False)
scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity", "1.0", ""])
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalar,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(
    ["loss", "layer.0.fc2.l2_mean", "layer.11.attn.logit_max", "_x.1", "a" * 129, "bad key"]
)
point = st.fixed_dictionaries(
    {
        "step": st.integers(-2, 2**53 + 2) | st.sampled_from([1.0, "3", True]) | json_values,
        "values": st.dictionaries(keys | st.text(max_size=6), scalar | finite, max_size=4),
    },
    optional={"rank": st.integers(-1, 70_000) | st.sampled_from([0.0, "0", False]), "extra": st.just(1)},
)
batch = st.fixed_dictionaries(
    {
        "batch_id": st.text(max_size=6) | st.just("b" * 129) | json_values,
        "points": st.lists(point, max_size=3),
    },
    optional={"more": st.just(1)},
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/vnd.x+json", "text/plain", None]
)


def _post(path: str, raw: bytes, content_type: str | None):  # noqa: ANN202
    headers = {"content-type": content_type} if content_type else {}
    r = CLIENT.post(path, content=raw, headers=headers)
    return r.status_code, r.json()


def _same(raw: bytes, content_type: str | None) -> None:
    assert _post("/fast", raw, content_type) == _post("/reference", raw, content_type), raw[:300]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=batch | json_values, content_type=content_types, nan_tokens=st.booleans())
def test_fast_path_answers_exactly_like_the_reference(body, content_type, nan_tokens):
    try:
        raw = json.dumps(body, allow_nan=nan_tokens).encode()
    except ValueError:  # NaN/inf present and NaN tokens not allowed: send them as numbers
        raw = json.dumps(body, allow_nan=True).encode()
    _same(raw, content_type)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_arbitrary_bytes_answer_like_the_reference(raw):
    _same(raw, "application/json")


def test_edge_cases_answer_like_the_reference():
    cases = [
        b"",
        b"{bad",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b'{"batch_id":"x","points":[{"step":1,"values":{"a":NaN,"b":Infinity,"c":-Infinity}}]}',
        b'{"batch_id":"x","points":[{"step":1,"values":{"a":1e400,"b":-0.0,"c":5e-324}}]}',
        b'{"batch_id":"x","points":[{"step":1,"values":{"a":1},"values":{"b":2}}]}',
        b'{"batch_id":"\\ud800","points":[]}',
        b'{"batch_id":"x","points":[{"step":9007199254740993,"values":{}}]}',
        b'{"batch_id":"x","points":[{"step":1.0,"values":{}}]}',
        b'{"batch_id":"x","points":[{"step":1,"values":{"a":100000000000000000000000000}}]}',
        b'  {"batch_id":"y","points":[]}  ',
    ]
    for raw in cases:
        for ct in ("application/json", None, "text/plain"):
            _same(raw, ct)


def test_valid_batch_round_trips_nan_and_inf_through_the_fast_path():
    raw = json.dumps(
        {
            "batch_id": "b",
            "points": [{"step": 3, "rank": 1, "values": {"loss": "nan", "g": "-inf", "x": 1e308}}],
        }
    ).encode()
    body = parse_points(raw, "application/json")
    v = body.points[0].values
    assert v["loss"] == "nan" and v["g"] == "-inf" and v["x"] == 1e308 and body.points[0].rank == 1
    assert math.isnan(float(v["loss"]))


def test_openapi_body_schema_is_the_wire_model_without_refs():
    schema = _inline_schema()
    assert "$ref" not in json.dumps(schema)
    point = schema["properties"]["points"]["items"]
    assert point["properties"]["step"]["maximum"] == 2**53
    assert set(schema["required"]) == {"batch_id", "points"}
