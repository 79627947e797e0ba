"""Past runs read from the files people have, as the per-step histories a live run would stream.

``read_history(path)`` reads one run: a TensorBoard logdir or event file, a CSV/TSV table (a W&B
or MLflow export, a parsed log), a JSON-lines file (stabmon's own ``JsonlSink`` output or flat
objects), or a Hugging Face Trainer's ``trainer_state.json``; :func:`discover` expands the paths a
user gives into runs (a directory of runs, one per sub-directory with event files). Names are
mapped onto the wire grammar (:mod:`stabmon.history.names`), restarts, duplicated steps, non-finite
values and gaps are handled and reported (:mod:`stabmon.history.assemble`). ``stabmon import``
sends the result through the collector client; ``stabmon backtest`` replays it through the
detector offline. Pure apart from reading the files; TensorBoard's reader is imported on use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from stabmon.history.hf import is_trainer_state, read_trainer_state
from stabmon.history.model import History, HistoryError
from stabmon.history.names import DEFAULT_NAMES, NameMap, parse_map
from stabmon.history.tables import read_delimited, read_json_list, read_jsonl
from stabmon.history.tensorboard import event_files, is_event_file, read_tensorboard

__all__ = [
    "DEFAULT_NAMES",
    "FORMATS",
    "History",
    "HistoryError",
    "NameMap",
    "discover",
    "detect_format",
    "parse_map",
    "read_history",
]

FORMATS = ("tensorboard", "csv", "tsv", "jsonl", "json", "hf_trainer_state")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def detect_format(path: Path) -> str:
    """The format of ``path``, by what it is and its name; a clear error when it is none of them."""
    if path.is_dir():
        if event_files(path):
            return "tensorboard"
        if (path / "trainer_state.json").is_file():
            return "hf_trainer_state"
        raise HistoryError(
            f"{path}: a directory with neither TensorBoard event files nor a trainer_state.json in it"
        )
    if not path.exists():
        raise HistoryError(f"{path}: no such file or directory")
    if is_event_file(path):
        return "tensorboard"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"  # a Trainer state or a list of rows: told apart once parsed
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"{"):
        return "jsonl"
    if head and b"\x00" not in head:
        return "tsv" if b"\t" in head.split(b"\n", 1)[0] else "csv"
    raise HistoryError(f"{path}: not a format stabmon reads ({', '.join(FORMATS)}); pass --format")


def default_name(path: Path) -> str:
    """A run name from its path: the file's stem, or for files whose name says nothing about the
    run (``trainer_state.json``, an event file) the directory's, skipping ``checkpoint-N``."""
    path = path.resolve()
    if path.is_file() and (path.name == "trainer_state.json" or is_event_file(path)):
        path = path.parent
    elif path.is_file():
        return path.stem
    if path.name.startswith("checkpoint-") and path.parent.name:
        return path.parent.name
    return path.name or "run"


def discover(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The runs in ``paths``: files and run directories as they are; a directory that is neither
    stands for its sub-directories (at any depth) that hold event files or a trainer state."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise HistoryError(f"{path}: no such file or directory")
        if path.is_file() or event_files(path) or (path / "trainer_state.json").is_file():
            out.append(path)
            continue
        found = sorted(
            {
                p.parent
                for p in path.rglob("*")
                if p.is_file() and (is_event_file(p) or p.name == "trainer_state.json")
            }
        )
        if not found:
            raise HistoryError(f"{path}: no TensorBoard event files or trainer_state.json under it")
        out.extend(found)
    return out


def _marks_a_run(p: Path) -> bool:
    return p.is_file() and (is_event_file(p) or p.name == "trainer_state.json")


def read_history(
    path: str | os.PathLike,
    *,
    fmt: str | None = None,
    names: NameMap | Mapping[str, str | None] | None = None,
    name: str | None = None,
    step_column: str | None = None,
) -> History:
    """One run's history from ``path`` (see the module docstring). ``names`` is a :class:`NameMap`
    or the ``--map`` entries for one; ``fmt`` overrides format detection."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise HistoryError(f"unknown format {fmt!r}; formats are {', '.join(FORMATS)}")
    fmt = fmt or detect_format(path)
    names = names if isinstance(names, NameMap) else NameMap(names)
    name = name or default_name(path)
    opts = {"name": name, "step_column": step_column}
    try:
        if fmt == "tensorboard":
            return read_tensorboard(path, names, **opts)
        if path.is_dir() and fmt == "hf_trainer_state":
            path = path / "trainer_state.json"
        if fmt in ("csv", "tsv"):
            return read_delimited(path, names, **opts)
        if fmt == "jsonl":
            return read_jsonl(path, names, **opts)
        data = _json(path)
        if is_trainer_state(data) or fmt == "hf_trainer_state":
            return read_trainer_state(path, data, names, **opts)
        if isinstance(data, list):
            return read_json_list(path, data, names, **opts)
        raise HistoryError(
            f"{path}: a JSON object without log_history: neither a Hugging Face trainer_state.json "
            "nor a list of rows (for one object per line, name the file .jsonl)"
        )
    except OSError as e:
        raise HistoryError(f"{path}: cannot read: {e.strerror or e}") from None


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise HistoryError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise HistoryError(f"{path}:{e.lineno}: not JSON: {e.msg} (column {e.colno})") from None
