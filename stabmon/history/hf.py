"""Reader for the Hugging Face Trainer's ``trainer_state.json`` (its ``log_history``).

The Trainer writes ``trainer_state.json`` into every checkpoint directory (and the output
directory at the end). Its ``log_history`` is a list of dicts, one per logging event: training
logs (``loss``, ``grad_norm``, ``learning_rate``, ``epoch``, ``step``), evaluation logs
(``eval_loss``, ...) at the same steps, and a final summary (``train_runtime``, ``train_loss``:
the mean over the whole run, not a per-step loss). The summary entry is not a series: it is kept
in the run's config as ``trainer_summary`` and reported. The state's own run settings
(``max_steps``, ``logging_steps``, ``train_batch_size``, ...) go into the config too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stabmon.history.assemble import assemble, number
from stabmon.history.model import History, HistoryError
from stabmon.history.names import NameMap
from stabmon.history.tables import ObjectRows

_STATE_FIELDS = (
    "global_step",
    "max_steps",
    "num_train_epochs",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "train_batch_size",
    "best_metric",
)
_SUMMARY_MARKERS = ("train_runtime", "train_samples_per_second")


def is_trainer_state(data: Any) -> bool:
    return isinstance(data, dict) and "log_history" in data


def read_trainer_state(
    path: Path, data: Any, names: NameMap, *, name: str, step_column: str | None = None
) -> History:
    """The history in a parsed ``trainer_state.json`` (see the module docstring)."""
    log = data.get("log_history") if isinstance(data, dict) else None
    if not isinstance(log, list):
        raise HistoryError(f"{path}: not a Hugging Face trainer_state.json: no log_history list")
    objects = ObjectRows(path, step_column or "step")
    rows = []
    summary: dict[str, Any] = {}
    for i, entry in enumerate(log):
        where = f"{path}: log_history[{i}]"
        if isinstance(entry, dict) and any(k in entry for k in _SUMMARY_MARKERS):
            summary.update({k: v for k, v in entry.items() if number(v) is not None})
            continue
        row = objects.row(entry, i, where)
        if row is not None:
            rows.append(row)
    config: dict[str, Any] = {k: data[k] for k in _STATE_FIELDS if data.get(k) is not None}
    notes = objects.notes()
    if summary:
        config["trainer_summary"] = summary
        notes.append(
            "the final summary entry (" + ", ".join(sorted(summary)) + ") is kept in the run's config "
            "as trainer_summary, not as series"
        )
    return assemble(
        rows,
        names,
        name=name,
        source=str(path),
        fmt="hf_trainer_state",
        where=lambda loc: f"{path}: log_history[{loc}]",
        notes=notes,
        config=config,
    )
