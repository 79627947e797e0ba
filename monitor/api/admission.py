"""Admission control for ingest: a bounded number of batches are stored at once, a bounded volume
waits for a bounded time, and the rest is answered 503 with ``Retry-After`` straight away.

Why: every ingest holds one database connection for its whole transaction. Unbounded, a
collector offered more than it can store lets requests pile up in the thread pool and in
SQLAlchemy's connection pool, where each waits up to 30 s before failing with a pool timeout:
latency grew to minutes (p50 70 s in the soak at 242,000 values/s) while throughput did not
grow at all. With the gate, at most ``slots`` ingests run (fewer than the pool's connections, so
they never wait for one and the rest stay free for reads and token checks; few, because a
worker's Python runs on one core, so more only share it), bodies of at most ``queue_bytes`` in
all wait at most ``wait_s`` for a slot, and every other request learns at once that the
collector is overloaded, before its body is parsed. The queue is bounded in bytes, not in
requests: a hundred runs sending one-second batches of 40 KB each can all wait their turn
(a queue of 12 requests per worker refused a third of them at 24,000 values/s, which the
collector kept up with), while a backlog of 4 MiB batches cannot pile up in memory. Clients
back off and retry with the same ``batch_id``, so nothing is lost or stored twice.

The gate is awaited on the request's event loop but is thread-safe (a lock and futures woken
with ``call_soon_threadsafe``), because one app may serve several event loops (test clients,
embedded servers) and slots are released from whichever finishes.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator

from fastapi import Request


class Overloaded(Exception):
    """No ingest slot within the wait: the collector is at capacity (answered 503)."""


def _grant(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class IngestGate:
    """``slots`` concurrent ingests; requests with bodies of up to ``queue_bytes`` in all wait
    up to ``wait_s`` seconds for one (a request finding nobody waiting may always wait, so a
    body larger than ``queue_bytes`` is not refused for its size alone)."""

    def __init__(self, slots: int, queue_bytes: int, wait_s: float) -> None:
        if slots < 1 or queue_bytes < 0 or wait_s < 0:
            raise ValueError(
                f"need slots >= 1, queue_bytes >= 0, wait_s >= 0 (got {slots}, {queue_bytes}, {wait_s})"
            )
        self.slots, self.queue_bytes, self.wait_s = slots, queue_bytes, wait_s
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: deque[asyncio.Future] = deque()
        self._sizes: dict[asyncio.Future, int] = {}
        self._queued_bytes = 0

    @property
    def running(self) -> int:
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def _refusal(self) -> Overloaded:
        return Overloaded(
            f"collector overloaded: {self.slots} batches are being stored and {len(self._waiters)} are "
            "waiting; retry later with the same batch_id"
        )

    def _dequeue(self, fut: asyncio.Future) -> None:
        self._queued_bytes -= self._sizes.pop(fut, 0)

    async def acquire(self, size: int = 0) -> None:
        """Take a slot for a request of ``size`` body bytes, waiting at most ``wait_s``; raises
        :class:`Overloaded` otherwise."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            full = bool(self._waiters) and self._queued_bytes + size > self.queue_bytes
            if full or self.wait_s <= 0:
                raise self._refusal()
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            self._sizes[fut] = size
            self._queued_bytes += size
        try:
            # shield: a timeout cancels the wait, not the future release() may be completing.
            await asyncio.wait_for(asyncio.shield(fut), self.wait_s)
        except (TimeoutError, asyncio.CancelledError) as e:
            with self._lock:
                granted = fut not in self._waiters
                if not granted:
                    self._waiters.remove(fut)
                    self._dequeue(fut)
                    refusal = self._refusal()
            if granted:  # release() handed this request the slot as the wait ended
                if isinstance(e, TimeoutError):
                    return
                self.release()
                raise
            if isinstance(e, asyncio.CancelledError):
                raise
            raise refusal from None

    def release(self) -> None:
        """Give a slot back: to the longest-waiting request, else to the pool of free slots."""
        with self._lock:
            while self._waiters:
                fut = self._waiters.popleft()
                self._dequeue(fut)
                try:
                    fut.get_loop().call_soon_threadsafe(_grant, fut)
                    return
                except RuntimeError:  # that request's event loop is closed: it is gone
                    continue
            self._free += 1


async def ingest_slot(request: Request) -> AsyncIterator[None]:
    """FastAPI dependency: hold an ingest slot for the rest of the request.

    The body is read first (bounded by ``STABMON_MAX_BODY_BYTES``; Starlette keeps it for the
    body parser): a client still sending when it is answered could see a broken connection
    instead of the 503."""
    size = len(await request.body())
    gate: IngestGate = request.app.state.ingest_gate
    await gate.acquire(size)
    try:
        yield
    finally:
        gate.release()
