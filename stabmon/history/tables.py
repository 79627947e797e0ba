"""Readers for tables of steps: CSV/TSV (a W&B or MLflow export, a parsed log) and JSON lines.

A **delimited** file has a header row naming its columns (a first row of numbers only is refused:
without names nothing can be mapped), one of which is the step (:data:`STEP_NAMES`, or the one
``step_column`` names); every other column is a series. Empty cells are missing values; ``nan``,
``inf``, ``Infinity`` are values. A column with no number in it at all (a run name, a status) is
skipped and reported; a column with numbers and one stray word is an error naming the line, since
guessing there would change the run.

A **JSON lines** file has one object per line: stabmon's own records (``{"step", "rank",
"values"}``, from ``JsonlSink``; other ranks than 0 are skipped and counted) or flat objects with a
step field (nested objects are flattened with ``/``: ``{"train": {"loss": 2}}`` is ``train/loss``).
A ``.json`` file holding a list of such objects reads the same way. A truncated last line (the
writer was killed mid-line) is skipped and reported; any other malformed line is an error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stabmon.history.assemble import assemble, check_step, number
from stabmon.history.model import History, HistoryError, Row
from stabmon.history.names import NameMap

STEP_NAMES = (
    "step",
    "_step",
    "global_step",
    "trainer/global_step",
    "train/global_step",
    "iteration",
    "iter",
    "it",
)
"""Step column names, tried in this order (case-insensitive)."""


def find_step(columns: list[str], step_column: str | None, where: str) -> str:
    if step_column is not None:
        if step_column not in columns:
            raise HistoryError(f"{where}: no column {step_column!r} (columns: {', '.join(columns)})")
        return step_column
    lower = {c.strip().lower(): c for c in columns}
    for candidate in STEP_NAMES:
        if candidate in lower:
            return lower[candidate]
    raise HistoryError(
        f"{where}: no step column among {', '.join(map(repr, columns))}; expected one of "
        f"{', '.join(STEP_NAMES)}, or name it with --step-column"
    )


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise HistoryError(f"{path}: not UTF-8 text (byte {e.start}); is it the right file?") from None


def read_delimited(path: Path, names: NameMap, *, name: str, step_column: str | None = None) -> History:
    """A CSV/TSV history (see the module docstring); tab-separated when the header has tabs."""
    text = _text(path)
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise HistoryError(f"{path}: the file is empty")
    delimiter = "\t" if "\t" in lines[first] or path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(lines[first:], delimiter=delimiter)
    header = [c.strip() for c in next(reader)]
    if all(number(c) is not None or _is_float(c) for c in header if c):
        raise HistoryError(
            f"{path}:{first + 1}: no header row (every cell is a number); the first line must name "
            "the columns (step, loss, ...)"
        )
    twice = sorted({c for c in header if c and header.count(c) > 1})
    if twice:
        raise HistoryError(f"{path}:{first + 1}: column {twice[0]!r} appears twice in the header")
    step_col = find_step(header, step_column, f"{path}:{first + 1}")
    si = header.index(step_col)
    cols = [(i, c) for i, c in enumerate(header) if i != si and c]
    numeric = {c: False for _, c in cols}
    stray: dict[str, tuple[int, str]] = {}
    rows: list[Row] = []
    width = len(header)
    for lineno, cells in enumerate(reader, start=first + 2):
        if not cells or not any(c.strip() for c in cells):
            continue
        if len(cells) != width:
            raise HistoryError(f"{path}:{lineno}: {len(cells)} cells where the header has {width}")
        raw_step = cells[si].strip()
        if not raw_step:
            raise HistoryError(f"{path}:{lineno}: no step in column {step_col!r}")
        step = check_step(raw_step, f"{path}:{lineno}")
        values: dict[str, float] = {}
        for i, c in cols:
            cell = cells[i].strip()
            if not cell:
                continue
            try:
                values[c] = float(cell)
                numeric[c] = True
            except ValueError:
                stray.setdefault(c, (lineno, cell))
        rows.append((step, values, lineno))
    notes = []
    for c, (lineno, cell) in stray.items():
        if numeric[c]:
            raise HistoryError(f"{path}:{lineno}: column {c!r}: {cell!r} is not a number")
        notes.append(f"skipped column {c!r}: not numeric (e.g. {cell!r})")
    fmt = "tsv" if delimiter == "\t" else "csv"
    return assemble(
        rows, names, name=name, source=str(path), fmt=fmt, where=lambda loc: f"{path}:{loc}", notes=notes
    )


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def flatten(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in obj.items():
        if isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


class ObjectRows:
    """Rows from JSON objects (a JSON-lines file, a JSON list, a Trainer's ``log_history``)."""

    def __init__(self, path: Path, step_field: str | None = None) -> None:
        self.path = path
        self.step_field = step_field
        self.other_ranks = 0
        self.non_numeric: dict[str, Any] = {}

    def row(self, obj: Any, loc: Any, where: str) -> Row | None:
        if not isinstance(obj, dict):
            raise HistoryError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if isinstance(obj.get("values"), dict) and "step" in obj:  # stabmon's own record
            if obj.get("rank", 0) not in (0, None):
                self.other_ranks += 1
                return None
            step = check_step(obj["step"], where)
            items: Any = obj["values"].items()
        else:
            key = self.step_field or next((k for k in obj if k.strip().lower() in STEP_NAMES), None)
            if key is None or key not in obj:
                raise HistoryError(
                    f"{where}: no step field among {', '.join(map(repr, list(obj)[:12]))}; expected "
                    f"one of {', '.join(STEP_NAMES)}, or name it with --step-column"
                )
            step = check_step(obj[key], where)
            items = ((k, v) for k, v in flatten(obj) if k != key)
        values: dict[str, float] = {}
        for k, v in items:
            f = number(v)
            if f is None:
                if v is not None:
                    self.non_numeric.setdefault(k, v)
                continue
            values[k] = f
        return step, values, loc

    def notes(self) -> list[str]:
        out = []
        if self.other_ranks:
            out.append(f"skipped {self.other_ranks} records of ranks other than 0")
        for k, v in self.non_numeric.items():
            out.append(f"skipped field {k!r}: not numeric (e.g. {json.dumps(v)[:40]})")
        return out


def read_jsonl(path: Path, names: NameMap, *, name: str, step_column: str | None = None) -> History:
    """A JSON-lines history (see the module docstring)."""
    lines = _text(path).split("\n")
    objects = ObjectRows(path, step_column)
    notes: list[str] = []
    rows: list[Row] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # no newline after it: the writer was cut off mid-line
                notes.append(f"skipped the truncated last line ({path}:{lineno})")
                break
            raise HistoryError(f"{path}:{lineno}: not JSON: {e.msg} (column {e.colno})") from None
        row = objects.row(obj, lineno, f"{path}:{lineno}")
        if row is not None:
            rows.append(row)
    return assemble(
        rows,
        names,
        name=name,
        source=str(path),
        fmt="jsonl",
        where=lambda loc: f"{path}:{loc}",
        notes=notes + objects.notes(),
    )


def read_json_list(
    path: Path, data: list, names: NameMap, *, name: str, step_column: str | None = None
) -> History:
    """A ``.json`` file holding a list of row objects."""
    objects = ObjectRows(path, step_column)
    rows = [r for i, obj in enumerate(data) if (r := objects.row(obj, i, f"{path}: [{i}]")) is not None]
    return assemble(
        rows,
        names,
        name=name,
        source=str(path),
        fmt="json",
        where=lambda loc: f"{path}: [{loc}]",
        notes=objects.notes(),
    )
