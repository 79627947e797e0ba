"""``POST /api/v1/runs/{run_id}/points``: the ingest endpoint.

A 2xx means the batch is durably committed together with the detector's verdict. Retrying a
batch (same ``batch_id``) is safe: it is acknowledged with ``duplicate: true`` and stored once.
Inside a batch a repeated (step, rank, key) keeps the last value; a (step, rank, key) stored
by an earlier batch is overwritten (resumed runs re-send steps). The answer carries the run's
open alerts, so the training job can react (stop, roll back) without polling.
"""

from __future__ import annotations

from fastapi import APIRouter

from monitor.api.deps import IngestDep, MetricsDep, ProjectDep
from monitor.api.routes.runs import RUN_ID
from stabmon.wire import IngestResponse, PointsIn

router = APIRouter(prefix="/api/v1/runs", tags=["points"])


@router.post("/{run_id}/points", response_model=IngestResponse)
def ingest_points(
    run_id: RUN_ID, body: PointsIn, project: ProjectDep, ingest: IngestDep, metrics: MetricsDep
):
    res = ingest.ingest(project.id, run_id, body)
    metrics.batches.labels("duplicate" if res.duplicate else "stored").inc()
    metrics.points.inc(res.accepted)
    return res
