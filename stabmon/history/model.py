"""What reading a past run produces: a :class:`History`, or a :class:`HistoryError`.

A history is a run's per-step series as the collector would have received them live:
``records`` in increasing step order, each ``(step, {key: value})`` with keys in the wire
grammar (`stabmon.wire`) and NaN/inf kept (they are data). ``notes`` says, in sentences, everything
that reading changed or could not take (renamed and skipped columns, restarts, duplicated steps,
non-finite values, gaps, a truncated tail), so an import never changes a run silently.

Readers report bad input as a :class:`HistoryError` whose message starts with the file and the
line, entry or tag it is about, so the command line can print it as it is, without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Row = tuple[int, dict[str, float], Any]
"""What a reader yields: ``(step, {source name: value}, where)``. ``where`` locates the row in
its file (a line number, an entry index, an event index) for messages; see ``Reader.where``."""


class HistoryError(ValueError):
    """Input that cannot be read as a run's history; the message names the file and the line,
    entry or tag."""


@dataclass
class History:
    name: str
    """The run's name: the file's or directory's name unless the caller gives one."""
    source: str
    """The path it was read from."""
    format: str
    """``tensorboard``, ``csv``, ``tsv``, ``jsonl``, ``json`` or ``hf_trainer_state``."""
    records: list[tuple[int, dict[str, float]]]
    """``(step, {key: value})`` in increasing step order, keys in the wire grammar."""
    notes: list[str] = field(default_factory=list)
    """What reading changed or skipped, one sentence each."""
    config: dict[str, Any] = field(default_factory=dict)
    """What the file says about the run besides its series (a Trainer state's ``max_steps``)."""
    restarts: int = 0
    duplicates: int = 0
    non_finite: int = 0

    @property
    def n_values(self) -> int:
        return sum(len(v) for _, v in self.records)

    @property
    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for _, values in self.records:
            for k in values:
                seen.setdefault(k)
        return sorted(seen)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The steps and values of one key."""
        steps, values = [], []
        for step, v in self.records:
            if key in v:
                steps.append(step)
                values.append(v[key])
        return steps, values

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """The history as the hooks would have written it: ``{"step", "rank", "values"}``."""
        for step, values in self.records:
            yield {"step": step, "rank": 0, "values": values}
