"""Small conversions shared by the store modules: values to and from the database (NaN on
SQLite is NULL), JSON with non-finite numbers (the wire's encoding), and timezone-aware UTC
timestamps (SQLite returns naive datetimes, PostgreSQL aware ones; callers always get aware
UTC)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from stabmon.wire import json_safe

NAN = float("nan")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(ts: datetime | None) -> datetime | None:
    """SQLite drops the tzinfo on the way back; every stored timestamp is UTC."""
    if ts is None or ts.tzinfo is not None:
        return ts
    return ts.replace(tzinfo=timezone.utc)


def to_db(x: float, sqlite: bool) -> float | None:
    """SQLite cannot hold NaN (it becomes NULL anyway); make that explicit."""
    if sqlite and x != x:
        return None
    return x


def from_db(x: float | None) -> float:
    return NAN if x is None else x


def is_finite(x: float) -> bool:
    return math.isfinite(x)


def dumps_json(obj) -> str:  # noqa: ANN001
    """The engines' JSON serializer: strict JSON, non-finite floats as strings."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(json_safe(obj), allow_nan=False)
