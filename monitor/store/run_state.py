"""The detector's per-run state in the store (``run_state``): a JSON snapshot, the last step
fed to it, and a stamp that tells a process whether the state it holds in memory is still the
stored one; plus the stored series a missing snapshot is rebuilt from.

The functions run inside the ingest transaction (:class:`monitor.store.unit.IngestUnit`) and
take the run's internal key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from monitor.store import models as m
from monitor.store.codec import aware, from_db, utcnow
from monitor.store.runs import dialect_insert


def load_state(conn: Connection, run_key: str) -> tuple[dict[str, Any] | None, int | None]:
    """The stored detector state dict and the last step fed to it, or (None, None)."""
    row = conn.execute(
        select(m.run_state.c.detector_state, m.run_state.c.last_step).where(m.run_state.c.run_id == run_key)
    ).one_or_none()
    if row is None:
        return None, None
    return json.loads(row.detector_state), row.last_step


def state_stamp(conn: Connection, run_key: str) -> tuple[int | None, datetime] | None:
    """(last_step, updated_at) of the run's stored detector state, without reading the state
    itself: the ingest service compares it with the stamp it wrote to know whether the state
    it holds in memory is still the stored one."""
    row = conn.execute(
        select(m.run_state.c.last_step, m.run_state.c.updated_at).where(m.run_state.c.run_id == run_key)
    ).one_or_none()
    return None if row is None else (row.last_step, aware(row.updated_at))


def save_state(
    conn: Connection, run_key: str, state: dict[str, Any] | str, last_step: int | None
) -> tuple[int | None, datetime]:
    """Store the detector state (a dict, or its JSON text); returns the stamp written (see
    :func:`state_stamp`)."""
    # NaN/inf allowed in a dict: Python's json reads them back as floats.
    blob = state if isinstance(state, str) else json.dumps(state)
    now = utcnow()
    stmt = dialect_insert(conn, m.run_state).values(
        run_id=run_key, detector_state=blob, last_step=last_step, updated_at=now
    )
    # excluded.*: the state (165 KB for 243 series) travels once, not once per clause.
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["run_id"],
            set_={c: stmt.excluded[c] for c in ("detector_state", "last_step", "updated_at")},
        )
    )
    return last_step, now


def stored_steps(
    conn: Connection, run_key: str, rank: int, before: int
) -> Iterator[tuple[int, dict[str, float]]]:
    """The run's stored values at ``rank`` for steps < ``before``, grouped by step in step
    order: what the detector replays when a run's state snapshot is missing."""
    rows = conn.execute(
        select(m.points.c.step, m.series.c.key, m.points.c.value)
        .join(m.series, m.series.c.id == m.points.c.series_id)
        .where(m.series.c.run_id == run_key, m.points.c.rank == rank, m.points.c.step < before)
        .order_by(m.points.c.step)
    ).tuples()
    cur_step, cur = None, {}
    for step, key, value in rows:
        if step != cur_step:
            if cur_step is not None:
                yield cur_step, cur
            cur_step, cur = step, {}
        cur[key] = from_db(value)
    if cur_step is not None:
        yield cur_step, cur
