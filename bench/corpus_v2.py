"""Corpus v2: divergences from named mechanisms, mid-run at a fixed peak LR, with matched controls.

The LR-range grids of `bench.detection` find each variant's stability edge by crossing it; most
of their divergences come in the first steps, where nothing can precede them. This corpus is
built the other way round: every diverging cell is one **mechanism** at one fixed peak LR and
schedule, and has **matched stable controls**: the same variant, LR and schedule without the
incident or data switch, or the same schedule just below the edge. Mechanisms (`MECHANISMS`):

- ``edge-baseline``: the pre-LN baseline at fixed LRs around its edge (logit growth, attention
  entropy collapse); controls: the same schedule at an LR below the edge;
- ``edge-qknorm``: each QK-normalised variant at fixed LRs just past its edge, no ramp;
- ``logit-drift``: weight decay 0 and no z-loss at a high LR (the output logits drift); controls:
  weight decay 0.1 with a z-loss of 1e-4 at the same LR;
- ``beta2-switch``: AdamW beta2 0.99 and 0.999 with the data distribution switched mid-run (a
  byte permutation: the second-moment mechanism); controls: the same beta2 without the switch;
- ``lr-spike``, ``corrupt-random``, ``corrupt-repeat``, ``grad-scale``: an incident injected
  mid-run (`trainer_hooks.lab.incidents`); controls: the same run without it (one set, shared).

Each run's result JSON carries ``mechanism`` (``control`` for a control), ``incident_step`` (the
incident's or the data switch's step; None for controls and the edge mechanisms) and
``control_of`` (the mechanisms a control is matched to). Lead times and recall are measured from
``incident_step`` when there is one (`stabmon.scoring.lead_reference`), the onset otherwise.
Runs are resumable (a finished run is one whose JSON exists) and run ``--jobs`` at a time, one
torch thread each; ``manifest.json`` records the machine and torch version of each build, and
``labels.json`` (written when scoring) stores them next to the labels.

    .venv/bin/python bench/detection.py --corpus v2 [--preset tiny] [--jobs 2] [--reuse]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer_hooks.lab.incidents import Incident, corrupt_batches, grad_scale, lr_spike  # noqa: E402

CONTROL = "control"
MECHANISMS = (
    "edge-baseline",
    "edge-qknorm",
    "logit-drift",
    "beta2-switch",
    "lr-spike",
    "corrupt-random",
    "corrupt-repeat",
    "grad-scale",
)
QK_VARIANTS = ("qk_norm", "qk_fc_norm", "qkv_norm", "qk_norm_cap")
MIN_ONSET = 50
"""A divergence counts toward the corpus's target only with its onset at or after this step."""


@dataclass(frozen=True)
class V2Preset:
    """The grid of one model size: every run has ``steps`` steps, ``warmup`` of them warmup,
    then the cosine; incidents and switches come at ``at``."""

    steps: int
    warmup: int
    at: int
    base_lr: float
    """The (stable) peak LR of the incident, switch and drift cells."""
    edge_lrs: tuple[float, ...]
    edge_control_lr: float
    qk_lrs: tuple[float, ...]
    qk_control_lr: float
    drift_lr: float
    spikes: tuple[tuple[float, int], ...]
    """(factor, steps) of the LR spikes."""
    corrupt_steps: int
    grad_scale: tuple[float, int]
    incident_variants: tuple[str, ...] = ("baseline",)
    seeds: tuple[int, ...] = (0, 1, 2)


V2_PRESETS: dict[str, V2Preset] = {
    # 300-step runs of the 0.1M-parameter model, 3 s each unmonitored on one thread. Measured
    # (seed 0): at LR 0.03 an LR spike x100 for 3 steps or x30 for 10 at step 150 diverges with
    # its onset at 150-151 (3/3 seeds for x100); 60 corrupted batches are worked off
    # (transients); grad scaling is absorbed by clipping and Adam; baseline at LR 0.3-0.5 and
    # qkv_norm at 0.5 still diverge within the warmup (onset 12-19) at this size.
    "tiny": V2Preset(
        steps=300,
        warmup=30,
        at=150,
        base_lr=0.03,
        edge_lrs=(0.3, 0.5),
        edge_control_lr=0.1,
        qk_lrs=(1.0,),
        qk_control_lr=0.3,
        drift_lr=0.3,
        spikes=((100.0, 3), (30.0, 10)),
        corrupt_steps=60,
        grad_scale=(1000.0, 5),
    ),
    # 400-step runs of the 472k-parameter model: 87 runs, about an hour with 2 jobs (600
    # unmonitored steps took 90-110 s per run on 2 shared cores). Not yet built. Probed on
    # 600-step runs (seed 0): at LR 0.01 an LR spike x10 for 10 steps and 50 random batches at
    # step 300 were worked off (transients), and baseline at LR 0.1 and qk_norm at 0.5 were
    # stable; hence the x30 spike and the edge LRs above those.
    "small": V2Preset(
        steps=400,
        warmup=30,
        at=200,
        base_lr=0.01,
        edge_lrs=(0.3, 0.5),
        edge_control_lr=0.1,
        qk_lrs=(1.0,),
        qk_control_lr=0.3,
        drift_lr=0.3,
        spikes=((100.0, 3), (30.0, 10)),
        corrupt_steps=50,
        grad_scale=(1000.0, 5),
        incident_variants=("baseline", "qk_norm"),
    ),
}


@dataclass(frozen=True)
class V2Cell:
    """One run of corpus v2: a mechanism (or ``control``) at one variant, LR, schedule, seed."""

    mechanism: str
    variant: str
    lr: float
    seed: int
    steps: int
    warmup: int
    weight_decay: float = 0.1
    z_loss: float = 0.0
    beta2: float = 0.95
    data_switch_step: int | None = None
    incident: Incident | None = None
    control_of: tuple[str, ...] = ()

    @property
    def incident_step(self) -> int | None:
        if self.incident is not None:
            return self.incident.step
        return self.data_switch_step

    @property
    def name(self) -> str:
        tags = [f"n{self.steps}w{self.warmup}"]
        if self.weight_decay != 0.1 or self.z_loss:
            tags.append(f"wd{self.weight_decay:g}z{self.z_loss:g}")
        if self.beta2 != 0.95:
            tags.append(f"b{self.beta2:g}")
        if self.data_switch_step is not None:
            tags.append(f"switch{self.data_switch_step}")
        if (inc := self.incident) is not None:
            what = inc.mode if inc.kind == "corrupt_batches" else f"x{inc.factor:g}"
            tags.append(f"{inc.kind}{inc.step}-{what}-{inc.steps}")
        return f"{self.mechanism}-{self.variant}-lr{self.lr:g}-{'-'.join(tags)}-s{self.seed}"

    def train_config(self, preset: str, threads: int | None = 1, device: str = "cpu"):
        from trainer_hooks.lab.train import TrainConfig

        return TrainConfig(
            variant=self.variant, preset=preset, lr=self.lr, steps=self.steps, warmup=self.warmup,
            seed=self.seed, weight_decay=self.weight_decay, z_loss=self.z_loss, beta2=self.beta2,
            data_switch_step=self.data_switch_step, incident=self.incident, eval_every=0,
            threads=threads, device=device, name=self.name,
        )  # fmt: skip


def grid(
    preset: str,
    seeds: Sequence[int] | None = None,
    mechanisms: Iterable[str] | None = None,
    spec: V2Preset | None = None,
) -> list[V2Cell]:
    """The corpus's runs, seed-major, each control once (its ``control_of`` merged over the
    mechanisms it serves); only the ``mechanisms`` given (default: all) and their controls."""
    p = spec or V2_PRESETS.get(preset, V2_PRESETS["small"])
    wanted = set(MECHANISMS if mechanisms is None else mechanisms)
    unknown = wanted - set(MECHANISMS)
    if unknown:
        raise ValueError(f"unknown mechanisms {sorted(unknown)}; choose from {', '.join(MECHANISMS)}")
    cells: dict[str, V2Cell] = {}

    def add(cell: V2Cell) -> None:
        prev = cells.get(cell.name)
        if prev is not None:
            cell = replace(prev, control_of=tuple(dict.fromkeys(prev.control_of + cell.control_of)))
        cells[cell.name] = cell

    for seed in p.seeds if seeds is None else seeds:
        base = dict(seed=seed, steps=p.steps, warmup=p.warmup)

        def pair(mech: str, variant: str, lr: float, treated: dict, control=None, base=base, **kw) -> None:
            if mech not in wanted:
                return
            add(V2Cell(mech, variant, lr, **base, **kw, **treated))
            add(V2Cell(CONTROL, variant, lr, **base, **kw, **(control or {}), control_of=(mech,)))

        for lr in p.edge_lrs if "edge-baseline" in wanted else ():
            add(V2Cell("edge-baseline", "baseline", lr, **base))
        if "edge-baseline" in wanted:
            add(V2Cell(CONTROL, "baseline", p.edge_control_lr, **base, control_of=("edge-baseline",)))
        for variant in QK_VARIANTS if "edge-qknorm" in wanted else ():
            for lr in p.qk_lrs:
                add(V2Cell("edge-qknorm", variant, lr, **base))
            add(V2Cell(CONTROL, variant, p.qk_control_lr, **base, control_of=("edge-qknorm",)))
        pair("logit-drift", "baseline", p.drift_lr, dict(weight_decay=0.0), dict(z_loss=1e-4))
        for beta2 in (0.99, 0.999):
            pair("beta2-switch", "baseline", p.base_lr, dict(data_switch_step=p.at), beta2=beta2)
        for variant in p.incident_variants:
            incidents = [("lr-spike", lr_spike(p.at, f, n)) for f, n in p.spikes] + [
                ("corrupt-random", corrupt_batches(p.at, p.corrupt_steps, "random")),
                ("corrupt-repeat", corrupt_batches(p.at, p.corrupt_steps, "repeat")),
                ("grad-scale", grad_scale(p.at, *p.grad_scale)),
            ]
            for mech, inc in incidents:
                pair(mech, variant, p.base_lr, dict(incident=inc))
    return list(cells.values())


def machine() -> dict[str, Any]:
    """Where the corpus was trained: labels can differ between CPUs (docs/detection.md)."""
    import torch

    return {
        "processor": platform.processor(),
        "uname": platform.uname()._asdict(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def run_cell(cell: V2Cell, out: str, preset: str, device: str = "cpu") -> dict[str, Any]:
    """Train one cell with stabmon's hooks; write ``runs/{name}.jsonl`` (the series) and, last
    and atomically, ``runs/{name}.json`` (its result and loss history, in the sweep's format)."""
    from trainer_hooks.client import JsonlSink
    from trainer_hooks.lab.train import train

    runs = Path(out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    series = runs / f"{cell.name}.jsonl"
    series.unlink(missing_ok=True)  # an interrupted attempt's partial series
    t0 = time.perf_counter()
    tcfg = cell.train_config(preset, threads=1 if device == "cpu" else None, device=device)
    result = train(tcfg, sink=JsonlSink(series))
    d = result.to_dict(history=True)
    detail = {
        **{k: d.get(k) for k in ("name", "variant", "lr", "seed", "steps", "steps_run", "plateau_loss")},
        **{k: d.get(k) for k in ("final_loss", "min_loss", "val_loss", "outcome", "onset", "num_params")},
        "warmup": cell.warmup,
        "preset": preset,
        "mechanism": cell.mechanism,
        "control_of": list(cell.control_of),
        "incident": asdict(cell.incident) if cell.incident is not None else None,
        "incident_step": cell.incident_step,
        "data_switch_step": cell.data_switch_step,
        "settings": {"weight_decay": cell.weight_decay, "z_loss": cell.z_loss, "beta2": cell.beta2},
        "losses": d["losses"],
        "grad_norms": d["grad_norms"],
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    tmp = runs / f"{cell.name}.json.tmp"
    tmp.write_text(json.dumps(detail))
    tmp.replace(runs / f"{cell.name}.json")
    return detail


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def build(cells: Sequence[V2Cell], out: str | Path, preset: str, jobs: int = 2, device: str = "cpu",
          deadline: float | None = None) -> list[str]:  # fmt: skip
    """Train every unfinished cell (``jobs`` processes); skip finished ones. Appends this build
    (its machine, torch version, the runs it trained) to ``manifest.json``, so a corpus resumed on
    another machine says which runs came from where. With ``deadline`` (a `time.monotonic`
    value) no cell starts after it. A cell that fails is reported and left for a rerun. Returns
    the names trained."""
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"preset": preset, "builds": []}
    manifest["cells"] = [c.name for c in cells]
    entry: dict[str, Any] = {"machine": machine(), "device": device, "started": time.time(), "trained": []}
    manifest.setdefault("builds", []).append(entry)
    todo = [c for c in cells if not (out / "runs" / f"{c.name}.json").exists()]
    done, failed = entry["trained"], []

    def report(d: dict[str, Any]) -> None:
        done.append(d["name"])
        path.write_text(json.dumps(manifest, indent=1))
        print(f"  [{len(done)}/{len(todo)}] {d['name']}: {d['outcome']} ({d['wall_s']:.0f}s)", flush=True)

    path.write_text(json.dumps(manifest, indent=1))
    if jobs <= 1 or len(todo) <= 1:
        results = (_run_before(c, str(out), preset, device, deadline) for c in todo)
        for d in results:
            if d is not None:
                report(d)
        return done
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(_run_before, c, str(out), preset, device, deadline): c for c in todo}
        for fut in as_completed(futures):
            try:
                d = fut.result()
            except Exception as e:  # one bad cell must not lose the others; a rerun retries it
                print(f"  {futures[fut].name} failed: {e!r}", flush=True)
                failed.append(futures[fut].name)
                continue
            if d is not None:
                report(d)
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {', '.join(failed)}; rerun to retry them")
    return done


def _run_before(cell: V2Cell, out: str, preset: str, device: str, deadline: float | None):
    if deadline is not None and time.monotonic() >= deadline:
        return None  # past the time budget: leave the cell for a later, resumed build
    return run_cell(cell, out, preset, device)
