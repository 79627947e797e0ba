"""Server-only response schemas. Request bodies and the shared response shapes (RunCreate,
RunUpdate, RunPublic, PointsIn, IngestResponse, AlertPublic) come from :mod:`stabmon.wire`;
values in these responses use the wire's non-finite encoding ("nan", "inf", "-inf")."""

from __future__ import annotations

from pydantic import BaseModel, Field

from stabmon.wire import RunPublic

JsonValue = float | str
"""A number, or "nan"/"inf"/"-inf"."""


class RunList(BaseModel):
    items: list[RunPublic]
    total: int
    """Runs matching the filters (all pages)."""
    limit: int
    offset: int


class KeyInfo(BaseModel):
    key: str
    layer: int | None
    site: str | None
    stat: str
    last_step: int | None


class KeysOut(BaseModel):
    run_id: str
    keys: list[KeyInfo]


class LatestValue(BaseModel):
    step: int
    value: JsonValue


class LatestOut(BaseModel):
    run_id: str
    values: dict[str, LatestValue]


class SeriesData(BaseModel):
    """One series, columnar: entry i of every list describes bucket i."""

    step: list[int] = Field(description="The last step with data in each bucket.")
    min: list[JsonValue] = Field(description="Minimum over the bucket's non-NaN values.")
    max: list[JsonValue] = Field(description="Maximum over the bucket's non-NaN values (spikes survive).")
    mean: list[JsonValue] = Field(description="Mean over the bucket's non-NaN values.")
    last: list[JsonValue] = Field(description="The value at the bucket's last step (may be nan).")
    count: list[int] = Field(description="Values in the bucket.")
    nan_count: list[int] = Field(description="NaN values in the bucket.")


class SeriesOut(BaseModel):
    run_id: str
    rank: int
    from_: int | None = Field(alias="from", serialization_alias="from")
    to: int | None
    bucket_width: int = Field(description="Steps per bucket; 1 means raw values, no downsampling.")
    downsampled: bool
    series: dict[str, SeriesData]


class Health(BaseModel):
    status: str
