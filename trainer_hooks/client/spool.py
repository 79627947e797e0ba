"""The client's durable, bounded, in-order queue of batches: an append-only JSONL file.

Every sealed batch is appended to ``<dir>/<run_id>.<tag>.spool.jsonl`` before it is sent,
one line per batch holding the exact request body; when the collector acknowledges it, an
``{"ack": batch_id}`` line is appended (and once nothing is pending the file is truncated
to zero, so a healthy run keeps it near empty). Batches are always sent from the head, so
delivery order is write order, across collector outages and across processes: a later
:class:`Spool` on the same file (same directory, run id and tag) loads the unacknowledged
batches and the client replays them first.

The run's status update (``close(status=..., summary=...)``) travels the same way: an entry
``{"batch_id": id, "run_update": {...}}`` appended after the run's last batch, so it reaches
the collector after every point, from this process or from the next one that loads the file.
It holds no points, so thinning never touches it.

Durability (the fsync policy): each append and ack is flushed to the operating system
before the call returns, so a crash of the training process loses nothing that reached the
spool; with ``fsync=True`` it is also forced to disk (survives power loss, costs a disk
sync per batch, paid by the background thread, never by the training step). A torn last
line from a crash mid-write is ignored on load.

Bound: the pending (unacknowledged) bytes are kept under ``max_bytes``. When an append
goes past it, the spool *thins the oldest history*: the oldest half of the pending bytes
(never the newest batch) keeps every ``keep_every``-th distinct step (all ranks of a kept
step) and drops the rest; this repeats until the spool fits. Repeated thinning makes old
history progressively coarser while recent steps stay complete, which is what a
divergence post-mortem needs. If the oldest segment has a single step left it is dropped
whole. The newest batch is never dropped, so the bound is ``max(max_bytes, one batch)``.
Dropped points are counted in :attr:`Spool.thinned_points`. Rejected batches (the collector
answered a non-retryable 4xx) move to ``<run_id>.<tag>.rejected.jsonl`` with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from trainer_hooks.client.batching import SealedBatch, seal

try:  # POSIX advisory lock: two live clients must not share one spool file.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("stabmon.client")


class SpoolInUseError(RuntimeError):
    """Another live process (or client) holds this spool file."""


Kind = Literal["points", "update"]


@dataclass
class _Entry:
    seq: int
    batch_id: str
    offset: int
    nbytes: int  # including the newline
    n_points: int
    kind: Kind = "points"


class Pending(NamedTuple):
    """The head of the spool: what to send next."""

    batch_id: str
    body: str
    """The request body: a ``PointsIn`` for points, a ``RunUpdate`` for an update."""
    n_points: int
    kind: Kind


class Spool:
    """Append-only batch queue on disk. Thread-safe: one appender and one sender thread."""

    def __init__(
        self,
        directory: str | os.PathLike,
        name: str,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        keep_every: int = 2,
        fsync: bool = False,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if keep_every < 2:
            raise ValueError(f"keep_every must be >= 2 (1 would never thin), got {keep_every}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{name}.spool.jsonl"
        self.rejected_path = self.dir / f"{name}.rejected.jsonl"
        self.max_bytes = max_bytes
        self.keep_every = keep_every
        self.fsync = fsync
        self.thinned_points = 0
        self.corrupt_lines = 0
        self._lock = threading.RLock()
        self._entries: list[_Entry] = []
        self._seq = 0
        self._dead = 0  # bytes of acknowledged batches and ack lines still in the file
        self._pending_bytes = 0  # running totals over _entries (kept O(1) per append/ack)
        self._pending_points = 0
        self._pending_updates = 0
        self._lock_file = open(self.dir / f"{name}.lock", "a+b")  # noqa: SIM115 - held for the spool's life
        if fcntl is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                self._lock_file.close()
                raise SpoolInUseError(
                    f"spool {self.path} is in use by another client; give each process its own "
                    f"run id or spool tag (ranks get one from $RANK)"
                ) from e
        self._f = open(self.path, "a+b")  # noqa: SIM115
        self._closed = False
        self._load()

    # -- state -------------------------------------------------------------------------
    @property
    def pending_batches(self) -> int:
        return len(self._entries)

    @property
    def pending_points(self) -> int:
        return self._pending_points

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_updates(self) -> int:
        """Run status updates not yet acknowledged (0 or 1 in practice)."""
        return self._pending_updates

    @property
    def last_seq(self) -> int:
        return self._seq

    def done_through(self) -> int:
        """Every batch with ``seq <=`` this is acknowledged, rejected or thinned away."""
        with self._lock:
            return self._entries[0].seq - 1 if self._entries else self._seq

    # -- appender side -----------------------------------------------------------------
    def append(self, batch: SealedBatch) -> int:
        """Append one batch; returns its sequence number. Thins old history past the bound."""
        data = (batch.body + "\n").encode()
        with self._lock:
            if self._closed:
                raise ValueError(f"spool {self.path} is closed")
            offset = self._write(data)
            self._seq += 1
            self._entries.append(_Entry(self._seq, batch.batch_id, offset, len(data), batch.n_points))
            self._pending_bytes += len(data)
            self._pending_points += batch.n_points
            self._enforce_bound()
            return self._seq

    def append_update(self, update: dict[str, Any]) -> int:
        """Append a run status update (a ``RunUpdate`` payload) behind every batch so far;
        returns its sequence number. Its id makes an acknowledgement name it like a batch."""
        bid = uuid.uuid4().hex
        line = json.dumps({"batch_id": bid, "run_update": update}, separators=(",", ":"), allow_nan=False)
        data = (line + "\n").encode()
        with self._lock:
            if self._closed:
                raise ValueError(f"spool {self.path} is closed")
            offset = self._write(data)
            self._seq += 1
            self._entries.append(_Entry(self._seq, bid, offset, len(data), 0, "update"))
            self._pending_bytes += len(data)
            self._pending_updates += 1
            return self._seq

    # -- sender side -------------------------------------------------------------------
    def peek(self) -> Pending | None:
        """The oldest pending entry, or None."""
        with self._lock:
            if self._closed or not self._entries:
                return None
            e = self._entries[0]
            self._f.seek(e.offset)
            line = self._f.read(e.nbytes).decode().rstrip("\n")
            if e.kind == "update":
                body = json.dumps(json.loads(line)["run_update"], separators=(",", ":"), allow_nan=False)
                return Pending(e.batch_id, body, 0, "update")
            return Pending(e.batch_id, line, e.n_points, "points")

    def ack(self, batch_id: str) -> bool:
        """Mark a batch delivered. False if it is no longer pending (thinned away meanwhile)."""
        with self._lock:
            if self._closed:
                return False  # a send that outlived close(): the batch stays for the next run
            idx = next((i for i, e in enumerate(self._entries) if e.batch_id == batch_id), None)
            if idx is None:
                return False
            e = self._entries.pop(idx)
            self._pending_bytes -= e.nbytes
            self._pending_points -= e.n_points
            self._pending_updates -= e.kind == "update"
            if not self._entries:
                # Nothing pending: start the file afresh instead of growing it with acks.
                self._f.truncate(0)
                self._sync()
                self._dead = 0
                return True
            mark = (json.dumps({"ack": batch_id}) + "\n").encode()
            self._write(mark)
            self._dead += e.nbytes + len(mark)
            if self._dead > max(1024 * 1024, self.pending_bytes):
                self._rewrite({})
            return True

    def split(self, batch_id: str) -> bool:
        """Replace a pending batch by its two halves under new ids, in place (the collector
        answered 413: its body limit is below ours). False if it holds a single point."""
        with self._lock:
            e = next((e for e in self._entries if e.batch_id == batch_id), None)
            if self._closed or e is None or e.kind != "points" or e.n_points < 2:
                return False
            self._f.seek(e.offset)
            pts = json.loads(self._f.read(e.nbytes))["points"]
            enc = [json.dumps(p, separators=(",", ":"), allow_nan=False) for p in pts]
            half = len(enc) // 2
            # New ids are safe: a 413 means the collector stored nothing of this batch.
            self._rewrite({batch_id: [seal(enc[:half]), seal(enc[half:])]})
            return True

    def reject(self, batch_id: str, body: str, status: int | None, detail: str) -> None:
        """Move a batch the collector refused to the rejected file, with why, and drop it here."""
        with self._lock:
            if self._closed:
                return
            rec = {"batch_id": batch_id, "status": status, "detail": detail, "time": time.time()}
            line = json.dumps(rec)[:-1] + ',"body":' + body + "}\n"
            with open(self.rejected_path, "ab") as f:
                f.write(line.encode())
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            self.ack(batch_id)

    def close(self) -> None:
        """Release the file and lock; an empty spool leaves no files behind."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            empty = not self._entries
            self._f.close()
            if empty:
                self.path.unlink(missing_ok=True)
                Path(self._lock_file.name).unlink(missing_ok=True)
            if fcntl is not None:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    # -- internals -----------------------------------------------------------------------
    def _write(self, data: bytes) -> int:
        self._f.seek(0, os.SEEK_END)
        offset = self._f.tell()
        self._f.write(data)
        self._sync()
        return offset

    def _sync(self) -> None:
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def _load(self) -> None:
        self._f.seek(0)
        entries: list[_Entry] = []
        acked: set[str] = set()
        offset, dirty = 0, False
        for line in self._f:  # line by line: a large spool is never held in memory whole
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                dirty = True  # torn write from a crash: that batch never reached the spool
                break
            try:
                obj = json.loads(line)
                if "ack" in obj:
                    acked.add(obj["ack"])
                    dirty = True
                    continue
                if "run_update" in obj:
                    if not isinstance(obj["run_update"], dict):
                        raise TypeError("run_update is not an object")
                    entries.append(_Entry(0, obj["batch_id"], start, len(line), 0, "update"))
                    continue
                entries.append(_Entry(0, obj["batch_id"], start, len(line), len(obj["points"])))
            except (ValueError, KeyError, TypeError):
                self.corrupt_lines += 1
                dirty = True
        entries = [e for e in entries if e.batch_id not in acked]
        for e in entries:
            self._seq += 1
            e.seq = self._seq
        self._entries = entries
        self._recount()
        if entries:
            log.info("stabmon client: %d undelivered batches found in %s", len(entries), self.path)
        if dirty:
            self._rewrite({})
        self._enforce_bound()

    def _enforce_bound(self) -> None:
        while len(self._entries) > 1 and self.pending_bytes > self.max_bytes:
            if not self._thin_once():
                return  # only the newest batch and status updates are left: nothing to thin

    def _thin_once(self) -> bool:
        # The oldest segment: batches covering about half of the pending bytes, never the newest
        # batch; status updates are skipped (they hold no points and must arrive).
        batches = [e for e in self._entries if e.kind == "points"]
        half, acc, seg = self.pending_bytes / 2, 0, []
        for e in batches[:-1]:
            if seg and acc + e.nbytes > half:
                break
            seg.append(e)
            acc += e.nbytes
        if not seg:
            return False
        bodies = {}
        for e in seg:
            self._f.seek(e.offset)
            bodies[e.batch_id] = json.loads(self._f.read(e.nbytes))
        steps = sorted({p["step"] for b in bodies.values() for p in b["points"]})
        replaced: dict[str, list[SealedBatch]] = {}
        if len(steps) < 2:
            oldest = seg[0]
            replaced[oldest.batch_id] = []
            self.thinned_points += oldest.n_points
        else:
            keep = set(steps[:: self.keep_every])
            for bid, b in bodies.items():
                pts = [p for p in b["points"] if p["step"] in keep]
                self.thinned_points += len(b["points"]) - len(pts)
                enc = [json.dumps(p, separators=(",", ":"), allow_nan=False) for p in pts]
                # Same batch id: if the collector already stored the full batch (its answer was
                # lost), the thinned retry is acknowledged as a duplicate, never stored twice.
                replaced[bid] = [seal(enc, batch_id=bid)] if enc else []
        log.warning(
            "stabmon client: spool over %d bytes, thinned its oldest %d batches (%d points dropped so far)",
            self.max_bytes,
            len(seg),
            self.thinned_points,
        )
        self._rewrite(replaced)
        return True

    def _rewrite(self, replaced: dict[str, list[SealedBatch]]) -> None:
        """Rewrite the file with only pending entries; ``replaced`` maps a batch id to the
        batches that take its place (none: drop it; several: split it, all keeping its seq)."""
        tmp = self.path.with_suffix(".tmp")
        entries: list[_Entry] = []
        with open(tmp, "wb") as out:
            for e in self._entries:
                if e.batch_id in replaced:
                    parts = [((b.body + "\n").encode(), b.batch_id, b.n_points) for b in replaced[e.batch_id]]
                else:
                    self._f.seek(e.offset)
                    parts = [(self._f.read(e.nbytes), e.batch_id, e.n_points)]
                for data, bid, n in parts:
                    # Only batches are ever replaced, by batches: every entry keeps its kind.
                    entries.append(_Entry(e.seq, bid, out.tell(), len(data), n, e.kind))
                    out.write(data)
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._f.close()
        self._f = open(self.path, "a+b")  # noqa: SIM115
        self._entries = entries
        self._recount()
        self._dead = 0

    def _recount(self) -> None:
        self._pending_bytes = sum(e.nbytes for e in self._entries)
        self._pending_points = sum(e.n_points for e in self._entries)
        self._pending_updates = sum(e.kind == "update" for e in self._entries)
