"""Server-only schemas: responses, and the body of ``PUT /api/v1/project/detector``. Other
request bodies and the shared response shapes (RunCreate,
RunUpdate, RunPublic, PointsIn, IngestResponse, AlertPublic) come from :mod:`stabmon.wire`;
values in these responses use the wire's non-finite encoding ("nan", "inf", "-inf")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
    pruned: bool = Field(
        default=False,
        description="The run's raw points were dropped by retention (stabmon db prune): buckets are "
        "whole 16-step chunk summaries at any max_points (bucket_width >= 16).",
    )
    series: dict[str, SeriesData]


class Health(BaseModel):
    status: str


class DetectorSettingsOut(BaseModel):
    """Detector overrides by layer and the config they resolve to."""

    layers: dict[str, dict[str, Any]] = Field(
        description="Overrides by layer, nested: 'collector' (STABMON_DETECTOR), 'project', and for a "
        "run 'run' (its config.detector). A higher layer wins, key by key."
    )
    sources: dict[str, str] = Field(
        description="For each overridden key ('rule.field'), the layer whose value holds."
    )
    effective: dict[str, Any] | None = Field(
        description="Every rule's settings after all layers (null when the layers do not fit together)."
    )
    problem: str | None = Field(
        default=None, description="Why the layers do not resolve, when they do not (null otherwise)."
    )


class ProjectDetectorOut(DetectorSettingsOut):
    """A project's detector overrides; ``effective`` is what a run registered now without
    overrides of its own is judged by."""

    project: str


class ProjectDetectorIn(BaseModel):
    """The project's new detector overrides, replacing the old ones (``{}`` clears them)."""

    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = Field(
        description="Nested or dotted keys, e.g. "
        '{"loss_spike": {"z_warning": 8}} or {"loss_spike.z_warning": 8}.'
    )


class RunDetectorOut(DetectorSettingsOut):
    """What a run is judged by: the collector-wide and project layers saved when it was
    registered (``resolved_at``), and its own overrides."""

    run_id: str
    resolved_at: datetime
