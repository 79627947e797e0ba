"""The collector is unreachable for a stretch: the client keeps accepting records, spools
them, keeps the spool file under its configured bound by thinning the oldest steps (never
the newest, counted), and delivers what is left once the collector comes up. Correctness
only: the throughput cost of an outage is measured in ``bench/fault_throughput.py``."""

from __future__ import annotations

import contextlib
import json
import os
import threading

import pytest

from tests._collector import Collector, free_port, read_all_series, wait_until
from trainer_hooks.client import Client, RunInfo
from trainer_hooks.client.batching import seal
from trainer_hooks.client.sinks import encode_record

pytestmark = pytest.mark.integration

KEYS = [f"layer.{i}.fc2.l2_mean" for i in range(16)] + ["loss"]
N_STEPS = 1500
MAX_BYTES = 64 * 1024


def _record(step: int) -> dict:
    return {"step": step, "rank": 0, "values": {k: step + i / 100 for i, k in enumerate(KEYS)}}


@pytest.mark.slow
def test_spool_stays_bounded_thins_oldest_and_delivers_the_rest(tmp_path):
    port = free_port()  # nothing listens here until the collector starts below
    c = Client(
        f"http://127.0.0.1:{port}",
        token="stm_unused_until_the_collector_exists",
        run=RunInfo(name="outage", id="outage"),
        spool_dir=tmp_path / "spool",
        spool_max_bytes=MAX_BYTES,
        spool_keep_every=2,
        max_batch_points=10,
        flush_interval_s=0.05,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
    )
    sizes: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.005):
            with contextlib.suppress(OSError):
                sizes.append(os.path.getsize(c.spool_path))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # The bound's only slack: the file holds one more full batch between an append and the
    # thinning pass that follows it.
    full = [json.dumps(encode_record(_record(10**6 + i)), separators=(",", ":")) for i in range(10)]
    batch_bytes = len(seal(full).body) + 1
    try:
        for s in range(N_STEPS):
            c.write(_record(s))
            if s % 100 == 99:
                # Let the batcher spool what it has so the file is watched as it grows.
                assert wait_until(lambda s=s: c.stats.points_spooled + c.stats.thinned_points >= s - 20, 30)
        assert wait_until(lambda: c.stats.points_spooled == N_STEPS, timeout=30), c.stats
        st = c.stats
        assert st.retries >= 1 and st.points_acked == 0 and st.records_dropped == 0
        assert st.thinned_points > 0
        assert st.spooled_bytes <= MAX_BYTES
    finally:
        stop.set()
        watcher.join(5)
    assert max(sizes) > MAX_BYTES // 2  # the watcher saw the spool fill up
    assert max(sizes) <= MAX_BYTES + batch_bytes, (max(sizes), batch_bytes)

    db = f"sqlite:///{tmp_path / 'stabmon.db'}"
    col = Collector(db, workdir=tmp_path, port=port)
    # Tokens are minted by the collector, which did not exist yet: the job ends with its
    # spool on disk, and a second client with the collector's token and the same run id
    # delivers it (the replay path a restarted job takes).
    c.close(status=None, timeout=0.5)
    assert c.stats.spooled_points > 0
    col.start()
    try:
        token = (tmp_path / "stabmon.db.token").read_text().strip()
        replay = Client(
            col.url, token=token, run=RunInfo(name="outage", id="outage"), spool_dir=tmp_path / "spool"
        )
        assert replay.flush(60), replay.stats
        replay.close()
        spooled_before = c.stats.spooled_points
        assert replay.stats.points_acked == spooled_before
        got = read_all_series(col.url, token, "outage", ["loss"])["loss"]
    finally:
        col.stop()
    steps = got["step"]
    # Exactly what was not thinned arrived, once, in order.
    assert len(steps) == N_STEPS - c.stats.thinned_points == spooled_before
    assert set(got["count"]) == {1} and steps == sorted(steps)
    # The newest steps are complete; the thinned ones are the oldest.
    tail = N_STEPS - steps[-1] - 1
    assert tail == 0
    newest_gap = max(i for i in range(1, len(steps)) if steps[i] - steps[i - 1] > 1)
    assert steps[newest_gap:] == list(range(steps[newest_gap], N_STEPS))
    assert N_STEPS - steps[newest_gap] >= 50  # at least a quarter of the bound's worth of steps
    assert steps[0] == 0  # thinning keeps every k-th step, starting with the oldest
