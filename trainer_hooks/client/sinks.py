"""Sinks: where the per-step records emitted by the hooks go.

A sink takes one record per emitted training step, ``{"step": int, "rank": int,
"values": {key: float}}``, through :meth:`stabmon.wire.Sink.write`, which must never block and
never raise into the training loop. This module holds the simple, local sinks:
:class:`MemorySink` (tests and notebooks), :class:`JsonlSink` (one JSON object per line,
NaN/inf encoded as in :mod:`stabmon.wire`, read back with :func:`read_jsonl`),
:class:`NullSink` (the null object used when nothing is configured, so the hot path has
no ``if enabled:``) and :class:`FanoutSink` (several sinks at once). The collector client
(:class:`trainer_hooks.client.Client`) implements the same protocol.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stabmon.wire import Sink, decode_value, encode_value

log = logging.getLogger("stabmon.client")


def encode_record(record: dict) -> dict[str, Any]:
    """A record in its JSON form: ``step``/``rank`` as ints, values through ``encode_value``."""
    return {
        "step": int(record["step"]),
        "rank": int(record.get("rank", 0)),
        "values": {k: encode_value(float(v)) for k, v in record["values"].items()},
    }


def decode_record(obj: dict) -> dict[str, Any]:
    """The inverse of :func:`encode_record`: wire values back to floats."""
    return {
        "step": int(obj["step"]),
        "rank": int(obj.get("rank", 0)),
        "values": {k: decode_value(v) for k, v in obj["values"].items()},
    }


class NullSink:
    """Accepts everything and keeps nothing: the sink when no destination is configured."""

    def write(self, record: dict) -> None:
        pass

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps every record in :attr:`records`, as plain ``{"step", "rank", "values"}`` dicts.

    The values dict is copied on write, so a caller reusing its dict cannot change history.
    Unbounded by design: meant for tests, notebooks and short runs.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def write(self, record: dict) -> None:
        if self.closed:
            return
        try:
            self.records.append(
                {
                    "step": int(record["step"]),
                    "rank": int(record.get("rank", 0)),
                    "values": {k: float(v) for k, v in record["values"].items()},
                }
            )
        except Exception as e:  # a malformed record must not reach the training loop
            log.warning("MemorySink: dropped malformed record: %s", e)

    def series(self, key: str, rank: int | None = None) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one key, in write order (optionally one rank only)."""
        return [
            (r["step"], r["values"][key])
            for r in self.records
            if key in r["values"] and (rank is None or r["rank"] == rank)
        ]

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class JsonlSink:
    """Appends one JSON object per record to ``path`` (non-finite values as "nan"/"inf"/"-inf").

    Lines are written through a buffered file and flushed to the OS on :meth:`flush` /
    :meth:`close` and every ``flush_every`` records, so a crash loses at most that many
    lines; ``fsync=True`` additionally forces them to disk on each flush. A record that
    cannot be encoded is logged and skipped; an I/O error (disk full) is logged once and
    the sink keeps accepting writes, so training never stops because of monitoring.
    """

    def __init__(self, path: str | os.PathLike, *, flush_every: int = 100, fsync: bool = False) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        self._lock = threading.Lock()
        self._flush_every = flush_every
        self._fsync = fsync
        self._pending = 0
        self._io_error_logged = False
        self.closed = False

    def write(self, record: dict) -> None:
        if self.closed:
            return
        try:
            line = json.dumps(encode_record(record), separators=(",", ":"), allow_nan=False)
        except Exception as e:
            log.warning("JsonlSink: dropped malformed record: %s", e)
            return
        with self._lock:
            try:
                self._f.write(line + "\n")
                self._pending += 1
                if self._pending >= self._flush_every:
                    self._flush_locked()
            except OSError as e:
                self._io_failed(e)

    def _flush_locked(self) -> None:
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self._pending = 0

    def _io_failed(self, e: OSError) -> None:
        if not self._io_error_logged:
            log.error("JsonlSink: cannot write %s: %s (further errors are not logged)", self.path, e)
            self._io_error_logged = True

    def flush(self, timeout: float | None = None) -> None:
        with self._lock:
            if self.closed:
                return
            try:
                self._flush_locked()
            except OSError as e:
                self._io_failed(e)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._flush_locked()
                self._f.close()
            except OSError as e:
                self._io_failed(e)


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield the records of a :class:`JsonlSink` file with floats decoded (NaN/inf restored).

    A truncated last line (the writer was killed mid-line) is skipped; any other malformed
    line raises ``ValueError`` naming the line number.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield decode_record(json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            if i == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{i}: not a stabmon record: {e}") from e


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a :class:`JsonlSink` file, as ``{"step", "rank", "values"}`` with floats."""
    return list(iter_jsonl(path))


class FanoutSink:
    """Writes every record to each of several sinks; one failing sink does not stop the others."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = list(sinks)

    def _each(self, method: str, *args: Any) -> None:
        for s in self.sinks:
            try:
                getattr(s, method)(*args)
            except Exception as e:
                log.warning("FanoutSink: %s.%s failed: %s", type(s).__name__, method, e)

    def write(self, record: dict) -> None:
        self._each("write", record)

    def flush(self, timeout: float | None = None) -> None:
        self._each("flush", timeout)

    def close(self) -> None:
        self._each("close")
