"""A sink that mirrors stabmon records into TensorBoard event files.

``FanoutSink(client, TensorBoardSink(logdir))`` sends each record to the collector and writes
every value as a scalar, ``SummaryWriter.add_scalar(key, value, step)``, so the series keys of
:mod:`stabmon.wire` (``loss``, ``layer.3.fc2.l2_mean``, ...) become TensorBoard tags; NaN and
infinities are written as they are. Records of ranks other than 0 (hooks attached with
``reduce=False`` under DDP) get their tags prefixed with ``rank{r}/``. Building a protobuf
event per scalar costs tens of microseconds, a few milliseconds for a step of a few hundred
series, so :meth:`TensorBoardSink.write` only queues the record and a daemon thread writes
it: the training thread never waits on the event file. The queue is bounded
(``max_queue`` records); past that the oldest records are dropped and counted in
:attr:`TensorBoardSink.dropped`.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "TensorBoardSink needs the tensorboard package: pip install 'stabmon[tensorboard]' (or tensorboard)"
    ) from e

log = logging.getLogger("stabmon.integrations")


class TensorBoardSink:
    """Writes each record's values with ``add_scalar(key, value, step)`` under ``logdir``."""

    def __init__(
        self, logdir: str | os.PathLike, *, max_queue: int = 10_000, flush_secs: float = 10.0
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.logdir = os.fspath(logdir)
        self.writer = SummaryWriter(self.logdir, flush_secs=int(max(1, flush_secs)))
        self.dropped = 0
        self.written = 0
        self._queue: collections.deque = collections.deque(maxlen=max_queue)
        self._lock = threading.Condition()
        self._queued = 0  # records ever queued, for flush() to wait on
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="stabmon-tensorboard", daemon=True)
        self._thread.start()

    def write(self, record: dict) -> None:
        """Queue one record (O(1)); never blocks, never raises."""
        if self._closed:
            return
        with self._lock:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            self._queue.append(record)
            self._queued += 1
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue and self._closed:
                    return
                record = self._queue.popleft()
            try:
                self._add(record)
            except Exception:
                log.exception("TensorBoardSink: writing step %s failed", record.get("step"))
            with self._lock:
                self.written += 1
                self._lock.notify_all()

    def _add(self, record: dict) -> None:
        step = int(record["step"])
        rank = int(record.get("rank", 0))
        prefix = f"rank{rank}/" if rank else ""
        for key, value in record["values"].items():
            self.writer.add_scalar(prefix + key, float(value), step)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is written (at most ``timeout`` s), then flush the file."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._queued  # each queued record ends up written or dropped
            while self.written + self.dropped < target and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._lock.wait(left)
        self.writer.flush()

    def close(self) -> None:
        """Write what is queued, close the event file; later writes are ignored. Idempotent."""
        if self._closed:
            return
        self.flush(timeout=30.0)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5.0)
        self.writer.close()
