"""Reading an offline W&B run back: the records of its ``run-*.wandb`` transaction log.

The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB blocks of chunks, each with
a CRC-32, a length and a type: full, first, middle, last) of ``wandb.proto.wandb_internal_pb2.Record``
protobufs. wandb 0.31 ships no Python reader for it (the old ``wandb.sdk.internal.datastore`` is
gone) and ``wandb sync`` only uploads, so the tests read it here, checksums included, and decode each
record with W&B's own protobuf classes: what the offline run would upload is what the test sees.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(raw: bytes):
    ident, magic, version = struct.unpack("<4sHB", raw[:_HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(raw):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", raw[pos : pos + _HEADER])
        if (crc, length, kind) == (0, 0, 0):
            pos += left
            continue
        data = raw[pos + _HEADER : pos + _HEADER + length]
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += _HEADER + length
        if kind == _FULL:
            yield data
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            yield pending + data


def read_offline_run(wandb_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """``{"history": [row, ...], "alerts": [{"title", "text", "level"}], "config": {...}}`` of the one
    offline run under ``wandb_dir``; a row maps each logged key to its (JSON-decoded) value.

    ``run.finish()`` can return before W&B's service process has written the log out (measured:
    up to ~50 ms), so this waits, up to ``timeout``, for the run's ``exit`` record."""
    (path,) = Path(wandb_dir).glob("**/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            out = _read(path.read_bytes())
        except (AssertionError, struct.error):  # caught mid-write
            out = None
        if out is not None and out.pop("exited"):
            return out
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.05)


def _read(raw: bytes) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {"history": [], "alerts": [], "config": {}, "exited": False}
    for data in _chunks(raw):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "alert":
            a = record.alert
            out["alerts"].append({"title": a.title, "text": a.text, "level": a.level})
        elif kind == "exit":
            out["exited"] = True
        elif kind in ("run", "config"):  # the config of wandb.init arrives with the run record
            updates = record.run.config.update if kind == "run" else record.config.update
            for u in updates:
                out["config"][u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    return out
