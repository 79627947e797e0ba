"""``POST /api/v1/runs/{run_id}/points``: the ingest endpoint.

A 2xx means the batch is durably committed together with the detector's verdict. Retrying a
batch (same ``batch_id``) is safe: it is acknowledged with ``duplicate: true`` and stored once.
Inside a batch a repeated (step, rank, key) keeps the last value; a (step, rank, key) stored
by an earlier batch is overwritten (resumed runs re-send steps). The answer carries the run's
open alerts, so the training job can react (stop, roll back) without polling. A collector at
capacity answers 503 with ``Retry-After`` (:mod:`monitor.api.admission`); nothing was stored.

The body is validated straight from its bytes by :class:`stabmon.wire.PointsIn` in pydantic's
JSON mode (one pass in Rust, about a quarter of the cost of ``json.loads`` followed by
validating the Python objects, which is what a plain ``body: PointsIn`` parameter does). A body
that the fast path refuses goes through exactly that reference path, so every rejection, its
status and its message stay what FastAPI answers for a ``PointsIn`` body, and anything the
reference accepts (e.g. Python's ``NaN`` tokens) is still accepted.
"""

from __future__ import annotations

import email.message
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from monitor.api.admission import ingest_slot
from monitor.api.deps import IngestDep, MetricsDep, ProjectDep
from monitor.api.routes.runs import RUN_ID
from stabmon.wire import IngestResponse, PointsIn

router = APIRouter(prefix="/api/v1/runs", tags=["points"])


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: ``application/json`` or ``application/*+json`` (parameters allowed); a
    missing Content-Type is not JSON (strict content type)."""
    if not content_type:
        return False
    msg = email.message.Message()
    msg["content-type"] = content_type
    if msg.get_content_maintype() != "application":
        return False
    sub = msg.get_content_subtype()
    return sub == "json" or sub.endswith("+json")


def _reference_parse(raw: bytes, content_type: str | None) -> PointsIn:
    """What FastAPI does with a ``body: PointsIn`` parameter: ``json.loads`` for a JSON
    content type, then validation of the Python objects; errors located under ``body``."""
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}])
    body: Any = raw
    if _is_json(content_type):
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestValidationError(
                [
                    {
                        "type": "json_invalid",
                        "loc": ("body", e.pos),
                        "msg": "JSON decode error",
                        "input": {},
                        "ctx": {"error": e.msg},
                    }
                ]
            ) from e
        except Exception as e:  # e.g. bytes that are not UTF-8/16/32
            raise HTTPException(status_code=400, detail="There was an error parsing the body") from e
    try:
        return PointsIn.model_validate(body, from_attributes=True)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        ) from e


def parse_points(raw: bytes, content_type: str | None) -> PointsIn:
    """The request body as a validated :class:`PointsIn`, or the exception FastAPI's own body
    handling would raise for it (422 :class:`RequestValidationError`, 400 for undecodable bytes)."""
    if raw and _is_json(content_type):
        try:
            return PointsIn.model_validate_json(raw)
        except ValidationError:
            pass  # the reference path decides, and words the error
    return _reference_parse(raw, content_type)


async def points_body(request: Request) -> PointsIn:
    return parse_points(await request.body(), request.headers.get("content-type"))


def _inline_schema() -> dict[str, Any]:
    """``PointsIn``'s JSON schema with its one ``$defs`` entry (``Point``) inlined, for the
    OpenAPI request body (the body is not a FastAPI body parameter, so it is declared here)."""
    schema = PointsIn.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline_schema()}}}}


@router.post("/{run_id}/points", response_model=IngestResponse, openapi_extra=_BODY_DOC)
def ingest_points(
    run_id: RUN_ID,
    project: ProjectDep,
    ingest: IngestDep,
    metrics: MetricsDep,
    # Resolved in this order: the token (401 first), an ingest slot (503 when overloaded, before
    # any parsing), then the body.
    _slot: Annotated[None, Depends(ingest_slot)],
    body: Annotated[PointsIn, Depends(points_body)],
):
    res = ingest.ingest(project.id, run_id, body)
    metrics.batches.labels("duplicate" if res.duplicate else "stored").inc()
    metrics.points.inc(res.accepted)
    return res
