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

import logging
import os

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "TensorBoardSink needs the tensorboard package: pip install 'stabmon[tensorboard]' (or tensorboard)"
    ) from e

from trainer_hooks.integrations.background import BackgroundWriter

log = logging.getLogger("stabmon.integrations")


class TensorBoardSink(BackgroundWriter):
    """Writes each record's values with ``add_scalar(key, value, step)`` under ``logdir``."""

    def __init__(
        self, logdir: str | os.PathLike, *, max_queue: int = 10_000, flush_secs: float = 10.0
    ) -> None:
        super().__init__(max_queue, "stabmon-tensorboard")
        self.logdir = os.fspath(logdir)
        self.writer = SummaryWriter(self.logdir, flush_secs=int(max(1, flush_secs)))
        self._thread.start()

    def write(self, record: dict) -> None:
        """Queue one record (O(1)); never blocks, never raises."""
        self._put(record)

    def _handle(self, record: dict) -> None:
        step = int(record["step"])
        rank = int(record.get("rank", 0))
        prefix = f"rank{rank}/" if rank else ""
        for key, value in record["values"].items():
            self.writer.add_scalar(prefix + key, float(value), step)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued record is written (at most ``timeout`` s), then flush the file."""
        self._wait_handled(timeout)
        self.writer.flush()

    def close(self) -> None:
        """Write what is queued, close the event file; later writes are ignored. Idempotent."""
        if self._stop():
            self.writer.close()
