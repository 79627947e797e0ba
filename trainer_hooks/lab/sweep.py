"""A grid of training runs (variant x learning rate x seed x warmup), resumable and in parallel.

`run_sweep(SweepConfig(...))` trains every cell of the grid with `trainer_hooks.lab.train.train`,
one process per cell (``jobs`` at a time, each with one torch thread), and writes, under
``out``: ``runs/{cell}.jsonl`` (every step's record from the hooks, readable with
`trainer_hooks.client.read_jsonl`), ``runs/{cell}.json`` (the cell's result row plus the full
loss/grad-norm history) and, once the grid is done, ``results.csv``/``results.json`` (one row
per cell) and the plots of `trainer_hooks.lab.sweep_plots`. A cell is finished when its result JSON
exists, so re-running the same command skips finished cells and redoes interrupted ones (their
partial series file is discarded first). Every run's records also pass through the divergence
detector in-process (`stabmon.detect`, the code the collector runs), which gives each row its
``first_critical_step``/``first_warning_step``; with ``early_stop`` the run ends at the first
critical finding. With ``collector`` the records are also streamed to a stabmon collector.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("stabmon.sweep")

VARIANTS = ("baseline", "qk_norm", "qk_fc_norm", "qkv_norm", "qk_norm_cap")
RESULT_COLUMNS = (
    "name",
    "variant",
    "lr",
    "seed",
    "warmup",
    "steps",
    "steps_run",
    "final_loss",
    "min_loss",
    "val_loss",
    "val_ppl",
    "diverged",
    "diverged_at",
    "divergence_reason",
    "outcome",
    "divergence_kind",
    "decision_step",
    "first_critical_step",
    "first_critical_rule",
    "first_warning_step",
    "stopped_early",
    "wall_s",
)


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``warmup`` None means the preset's default warmup."""

    variant: str
    lr: float
    seed: int
    warmup: int | None = None

    @property
    def name(self) -> str:
        w = "d" if self.warmup is None else str(self.warmup)
        return f"{self.variant}-lr{self.lr:g}-w{w}-s{self.seed}"


@dataclass
class SweepConfig:
    variants: tuple[str, ...] = VARIANTS
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
    seeds: tuple[int, ...] = (0, 1)
    warmups: tuple[int | None, ...] = (None,)
    """Warmup steps to sweep over; None is the preset's default."""
    steps: int | None = None
    """Steps per run; None is the preset's default."""
    preset: str = "small"
    out: str = "runs/sweep"
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Runs in parallel (each in its own process with one torch thread); 1 runs in-process."""
    early_stop: bool = False
    """Stop a run at the detector's first critical finding."""
    detector: dict[str, Any] = field(default_factory=dict)
    """`stabmon.detect.DetectorConfig.from_overrides` overrides for the in-process detector."""
    collector: str | None = None
    token: str | None = None
    project: str | None = None
    eval_every: int | None = None
    monitor_every: int = 1
    plots: bool = True

    def __post_init__(self) -> None:
        if not self.variants or not self.lrs or not self.seeds or not self.warmups:
            raise ValueError("variants, lrs, seeds and warmups must each name at least one value")
        if any(not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise ValueError(f"learning rates must be finite and > 0, got {list(self.lrs)}")
        if any(w is not None and w < 0 for w in self.warmups):
            raise ValueError(f"warmups must be >= 0, got {list(self.warmups)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.collector and not self.token:
            raise ValueError("a collector needs a token")
        from trainer_hooks.lab.config import PRESETS
        from trainer_hooks.lab.config import VARIANTS as KNOWN

        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        unknown = [v for v in self.variants if v not in KNOWN]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; choose from {', '.join(KNOWN)}")
        from stabmon.detect import DetectorConfig

        DetectorConfig.from_overrides(self.detector)  # fail before any run starts

    def cells(self) -> list[Cell]:
        """The grid, seed-major: every (variant, lr, warmup) of the first seed before the next
        seed, so an interrupted sweep leaves whole replicas rather than a ragged grid."""
        return [
            Cell(v, float(lr), s, w)
            for s in self.seeds
            for w in self.warmups
            for v in self.variants
            for lr in self.lrs
        ]


class DetectorSink:
    """A sink that runs `stabmon.detect` on every record it sees (in the training process) and
    remembers the first warning and the first critical finding. Never raises into training."""

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        from stabmon.detect import Detector, DetectorConfig

        self.detector = Detector(DetectorConfig.from_overrides(overrides))
        self.state = self.detector.new_state()
        self.first_warning: tuple[int, str] | None = None
        self.first_critical: tuple[int, str] | None = None
        self._failed = False

    def write(self, record: dict) -> None:
        if self._failed:
            return
        try:
            step = int(record["step"])
            for f in self.detector.observe(self.state, step, record["values"]):
                if f.severity == "critical" and self.first_critical is None:
                    self.first_critical = (step, f.rule)
                if self.first_warning is None:
                    self.first_warning = (step, f.rule)
        except Exception:
            log.exception("in-process detector failed; the run continues unwatched")
            self._failed = True

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


def run_cell(cell: Cell, cfg: SweepConfig) -> dict[str, Any]:
    """Train one cell; write its series and result files; return its result row."""
    from trainer_hooks.client import FanoutSink, JsonlSink
    from trainer_hooks.lab.train import TrainConfig, train

    runs = Path(cfg.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    series_path = runs / f"{cell.name}.jsonl"
    series_path.unlink(missing_ok=True)  # an interrupted attempt's partial series
    tcfg = TrainConfig(
        variant=cell.variant,
        preset=cfg.preset,
        lr=cell.lr,
        steps=cfg.steps,
        warmup=cell.warmup,
        seed=cell.seed,
        eval_every=cfg.eval_every,
        monitor_every=cfg.monitor_every,
        threads=1,
        name=cell.name,
    ).resolved()
    watch = DetectorSink(cfg.detector)
    sinks: list[Any] = [JsonlSink(series_path), watch]
    if cfg.collector:
        from trainer_hooks.client import Client, RunInfo

        run_info = RunInfo(name=cell.name, project=cfg.project, config=tcfg.to_dict())
        sinks.append(Client(cfg.collector, token=cfg.token, run=run_info))

    def early_stop(info) -> str | None:
        return "stop" if watch.first_critical is not None else None

    t0 = time.perf_counter()
    result = train(tcfg, sink=FanoutSink(*sinks), callbacks=[early_stop] if cfg.early_stop else [])
    wall = time.perf_counter() - t0
    d = result.to_dict(history=True)
    row = {
        "name": cell.name,
        "variant": cell.variant,
        "lr": cell.lr,
        "seed": cell.seed,
        "warmup": tcfg.warmup,
        "steps": tcfg.steps,
        "steps_run": result.steps_run,
        "final_loss": _finite(result.final_loss),
        "min_loss": _finite(result.min_loss),
        "val_loss": _finite(result.val_loss),
        "val_ppl": _finite(result.val_ppl),
        "diverged": result.diverged,
        "diverged_at": result.diverged_at,
        "divergence_reason": result.divergence_reason,
        "outcome": result.outcome,
        "divergence_kind": result.divergence_kind,
        "decision_step": result.decision_step,
        "first_critical_step": watch.first_critical[0] if watch.first_critical else None,
        "first_critical_rule": watch.first_critical[1] if watch.first_critical else None,
        "first_warning_step": watch.first_warning[0] if watch.first_warning else None,
        "stopped_early": result.stopped_by == "callback",
        "wall_s": round(wall, 2),
    }
    detail = {
        **row,
        "preset": cfg.preset,
        "plateau_loss": result.plateau_loss,
        "incident": result.incident,
        "incident_step": result.incident_step,
        "data_switch_step": result.data_switch_step,
        "losses": d["losses"],
        "grad_norms": d["grad_norms"],
        "val_history": d["val_history"],
    }
    # Written last and atomically: its existence is what marks the cell finished.
    tmp = runs / f"{cell.name}.json.tmp"
    tmp.write_text(json.dumps(detail, allow_nan=False))
    tmp.replace(runs / f"{cell.name}.json")
    return row


def load_row(path: str | os.PathLike) -> dict[str, Any]:
    """A finished cell's result row (without the history) from its result JSON."""
    d = json.loads(Path(path).read_text())
    return {k: d.get(k) for k in RESULT_COLUMNS}


def load_detail(out: str | os.PathLike, name: str) -> dict[str, Any]:
    """A finished cell's result JSON, history included."""
    return json.loads((Path(out) / "runs" / f"{name}.json").read_text())


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def run_sweep(
    cfg: SweepConfig, on_done: Callable[[dict[str, Any], int, int], None] | None = None
) -> list[dict[str, Any]]:
    """Run every unfinished cell of the grid; write the tables (and plots); return all rows.

    ``on_done(row, done, todo)`` is called in this process after each cell finishes. A cell that
    raises is logged and left unfinished (a re-run retries it); the others go on.
    """
    out = Path(cfg.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    cells = cfg.cells()
    todo = [c for c in cells if not (runs / f"{c.name}.json").exists()]
    failures: list[tuple[Cell, BaseException]] = []

    def done(row: dict[str, Any], i: int) -> None:
        if on_done is not None:
            on_done(row, i, len(todo))

    if cfg.jobs == 1 or len(todo) <= 1:
        for i, cell in enumerate(todo, 1):
            try:
                done(run_cell(cell, cfg), i)
            except Exception as e:
                log.exception("cell %s failed", cell.name)
                failures.append((cell, e))
    elif todo:
        # spawn, not fork: a forked child would inherit the parent's torch thread pools.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(cfg.jobs, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(run_cell, c, cfg): c for c in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                try:
                    done(fut.result(), i)
                except BrokenProcessPool:
                    # A worker died (killed, out of memory): every pending cell fails the same way.
                    pool.shutdown(cancel_futures=True)
                    raise RuntimeError(
                        "a sweep worker process died; finished cells are kept, re-run to resume"
                    ) from None
                except Exception as e:
                    log.error("cell %s failed: %s", futures[fut].name, e)
                    failures.append((futures[fut], e))
    rows = [load_row(runs / f"{c.name}.json") for c in cells if (runs / f"{c.name}.json").exists()]
    write_tables(rows, out)
    if cfg.plots and rows:
        from trainer_hooks.lab.sweep_plots import plot_sweep

        plot_sweep(out, rows)
    if failures:
        names = ", ".join(c.name for c, _ in failures)
        raise RuntimeError(f"{len(failures)} cell(s) failed: {names}; re-run to retry them")
    return rows


def write_tables(rows: Iterable[dict[str, Any]], out: str | os.PathLike) -> None:
    """``results.csv`` and ``results.json`` (one row per finished cell) under ``out``."""
    rows = list(rows)
    out = Path(out)
    (out / "results.json").write_text(json.dumps(rows, indent=1, allow_nan=False))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r.get(k) for k in RESULT_COLUMNS})


def config_dict(cfg: SweepConfig) -> dict[str, Any]:
    """The sweep's settings, JSON-able (written as ``sweep.json`` by the CLI)."""
    d = asdict(cfg)
    d.pop("token", None)
    return d
