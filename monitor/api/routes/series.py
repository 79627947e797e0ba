"""Reading series: ``/keys`` (what exists), ``/latest`` (current values, from the latest-value
table) and ``/series`` (ranges, downsampled server-side keeping min/max per bucket)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from monitor.api.deps import ProjectDep, StoreDep
from monitor.api.routes.runs import RUN_ID
from monitor.api.schemas import KeyInfo, KeysOut, LatestOut, LatestValue, SeriesData, SeriesOut
from monitor.store.series import DEFAULT_MAX_POINTS, MAX_MAX_POINTS
from stabmon.wire import MAX_STEP, encode_value, is_valid_key

MAX_KEYS_PER_QUERY = 200

router = APIRouter(prefix="/api/v1/runs", tags=["series"])


@router.get("/{run_id}/keys", response_model=KeysOut)
def list_keys(run_id: RUN_ID, project: ProjectDep, store: StoreDep):
    """Every series of the run with its parsed layer/site/stat and latest step."""
    infos = store.keys(project.id, run_id)
    return KeysOut(
        run_id=run_id,
        keys=[
            KeyInfo(key=i.key, layer=i.layer, site=i.site, stat=i.stat, last_step=i.last_step) for i in infos
        ],
    )


@router.get("/{run_id}/latest", response_model=LatestOut)
def latest_values(run_id: RUN_ID, project: ProjectDep, store: StoreDep):
    """The value at the highest step of every series (non-finite as "nan"/"inf"/"-inf")."""
    vals = store.latest(project.id, run_id)
    return LatestOut(
        run_id=run_id, values={k: LatestValue(step=s, value=encode_value(v)) for k, (s, v) in vals.items()}
    )


def _parse_keys(raw: str) -> list[str]:
    keys = list(dict.fromkeys(k.strip() for k in raw.split(",") if k.strip()))
    if not keys:
        raise HTTPException(status_code=422, detail="keys: give at least one series key (comma-separated)")
    if len(keys) > MAX_KEYS_PER_QUERY:
        raise HTTPException(
            status_code=422, detail=f"keys: at most {MAX_KEYS_PER_QUERY} keys per query, got {len(keys)}"
        )
    bad = [k for k in keys if not is_valid_key(k)]
    if bad:
        raise HTTPException(status_code=422, detail=f"keys: invalid series key {bad[0][:140]!r}")
    return keys


@router.get("/{run_id}/series", response_model=SeriesOut, response_model_by_alias=True)
def read_series(
    run_id: RUN_ID,
    project: ProjectDep,
    store: StoreDep,
    keys: Annotated[str, Query(max_length=40_000, description="Comma-separated series keys.")],
    from_: Annotated[
        int | None, Query(alias="from", ge=0, le=MAX_STEP, description="First step (inclusive).")
    ] = None,
    to: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="Last step (inclusive).")] = None,
    max_points: Annotated[
        int, Query(ge=1, le=MAX_MAX_POINTS, description="Buckets per series.")
    ] = DEFAULT_MAX_POINTS,
    rank: Annotated[int, Query(ge=0, le=65_535)] = 0,
):
    """Values of ``keys`` over [from, to]. Ranges longer than ``max_points`` steps are split
    into equal step buckets, each reported as min, max, mean, last, count and NaN count, so a
    one-step spike or a NaN is never averaged away. Unknown keys come back empty."""
    key_list = _parse_keys(keys)
    if from_ is not None and to is not None and to < from_:
        raise HTTPException(status_code=422, detail=f"to ({to}) is before from ({from_})")
    res = store.series(
        project.id, run_id, key_list, from_step=from_, to_step=to, max_points=max_points, rank=rank
    )
    enc = encode_value
    series = {
        k: SeriesData(
            step=b.step,
            min=[enc(x) for x in b.min],
            max=[enc(x) for x in b.max],
            mean=[enc(x) for x in b.mean],
            last=[enc(x) for x in b.last],
            count=b.count,
            nan_count=b.nan_count,
        )
        for k, b in res.series.items()
    }
    return SeriesOut(
        run_id=run_id,
        rank=res.rank,
        **{"from": res.from_step},
        to=res.to_step,
        bucket_width=res.bucket_width,
        downsampled=res.bucket_width > 1,
        pruned=res.pruned,
        series=series,
    )
