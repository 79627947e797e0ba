"""The mirror sinks' shared machinery: a bounded queue drained by one daemon thread.

A mirror (TensorBoard, W&B) must never make the training thread or the client's sender thread
wait on its backend, nor let the backend's errors reach them. :class:`BackgroundWriter` gives a
subclass that: :meth:`_put` queues an item in O(1) and never blocks (past ``max_queue`` the
oldest item is dropped and counted in :attr:`dropped`), a daemon thread hands each item to
:meth:`_handle` (errors logged, never raised), :meth:`flush` waits until everything queued so far
is handled or dropped, and :meth:`_stop` drains and ends the thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

log = logging.getLogger("stabmon.integrations")


class BackgroundWriter:
    def __init__(self, max_queue: int, thread_name: str) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.dropped = 0
        self.written = 0
        self._queue: collections.deque = collections.deque(maxlen=max_queue)
        self._lock = threading.Condition()
        self._queued = 0  # items ever queued, for flush() to wait on
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    def _handle(self, item: Any) -> None:
        """Hand one item to the backend (on the writer thread)."""
        raise NotImplementedError

    def _put(self, item: Any) -> None:
        if self._closed:
            return
        with self._lock:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            self._queue.append(item)
            self._queued += 1
            self._lock.notify()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue and self._closed:
                    return
                item = self._queue.popleft()
            try:
                self._handle(item)
            except Exception:
                log.exception("%s: handing an item to its backend failed", type(self).__name__)
            with self._lock:
                self.written += 1
                self._lock.notify_all()

    def _wait_handled(self, timeout: float | None) -> None:
        """Wait until every item queued so far is handled or dropped (at most ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._queued  # each queued item ends up handled or dropped
            while self.written + self.dropped < target and self._thread.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._lock.wait(left)

    def _stop(self) -> bool:
        """Drain the queue (at most 30 s) and end the thread; False if already stopped."""
        if self._closed:
            return False
        self._wait_handled(timeout=30.0)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5.0)
        return True
