"""Small conversions shared by the store modules: values to and from the database (NaN on
SQLite is NULL), wire values to floats, and timezone-aware UTC timestamps (SQLite returns
naive datetimes, PostgreSQL aware ones; callers always get aware UTC)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

NAN = float("nan")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite drops the tzinfo on the way back; every stored timestamp is UTC."""
    if ts is None or ts.tzinfo is not None:
        return ts
    return ts.replace(tzinfo=timezone.utc)


def wire_to_float(v: float | int | str) -> float:
    """A validated wire value (number, or 'nan'/'inf'/'-inf') as a float."""
    if isinstance(v, str):
        return float(v)  # the wire contract already restricted it to nan/inf/-inf
    return float(v)


def to_db(x: float, sqlite: bool) -> float | None:
    """SQLite cannot hold NaN (it becomes NULL anyway); make that explicit."""
    if sqlite and x != x:
        return None
    return x


def from_db(x: float | None) -> float:
    return NAN if x is None else x


def is_finite(x: float) -> bool:
    return math.isfinite(x)


def json_safe(obj):  # noqa: ANN001, ANN201
    """``obj`` with non-finite floats replaced by the wire strings 'nan'/'inf'/'-inf', so it is
    valid JSON (PostgreSQL's json type and HTTP responses reject NaN tokens)."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj) -> str:  # noqa: ANN001
    """The engines' JSON serializer: strict JSON, non-finite floats as strings."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(obj), allow_nan=False)
