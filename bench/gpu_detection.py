"""Corpus v2 at a larger size, for a lent GPU: build it in a fixed time budget, then score it.

On one CUDA device, trains a small corpus-v2 grid (`bench.corpus_v2`: mechanisms at a fixed peak
LR, each with its matched stable controls) of the ``base`` preset (~25M parameters, bf16
autocast: the trainer's default on CUDA) for 1000+ steps per run, several runs at a time on the
one GPU, and writes under OUT the series (``runs/*.jsonl``), the results and labels
(``runs/*.json``, ``labels.json`` with the GPU and torch version), and the scored tables
(``detection_v2.json``/``.md``, `bench.corpus_v2_score`). No run starts after the training budget
(``--budget-s`` minus ``--reserve-s``), so the whole command ends within about ``--budget-s``
(8 minutes by default); the grid is seed-major, so a cut leaves whole seeds. Rerun with the same
OUT to resume, or ``--reuse`` to rescore. On a machine without CUDA it refuses and trains nothing.

    python bench/gpu_detection.py OUT [--budget-s 480] [--jobs 4] [--steps 1000] [--reuse]

No test depends on it beyond ``--help`` and the refusal.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus_v2 import V2Preset, build, grid  # noqa: E402

PRESET = "base"
MECHANISMS = ("lr-spike", "corrupt-random", "logit-drift", "edge-baseline", "beta2-switch", "edge-qknorm")
"""The mechanisms of the GPU grid (``grad-scale`` and ``corrupt-repeat`` left out for time)."""


def gpu_spec(steps: int) -> V2Preset:
    """The grid at the ``base`` size. Its LRs are starting points scaled from the CPU presets
    (the edge falls with width); no GPU build has calibrated them yet."""
    at = steps // 2
    return V2Preset(
        steps=steps,
        warmup=max(steps // 20, 1),
        at=at,
        base_lr=1e-3,
        edge_lrs=(1e-2, 3e-2),
        edge_control_lr=3e-3,
        qk_lrs=(0.1,),
        qk_control_lr=3e-2,
        drift_lr=1e-2,
        spikes=((100.0, 3), (10.0, 10)),
        corrupt_steps=50,
        grad_scale=(1000.0, 5),
        seeds=(0, 1, 2),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="Output folder: series, labels and the scored tables.")
    p.add_argument("--budget-s", type=float, default=480.0, help="Wall-clock budget of the whole command.")
    p.add_argument(
        "--reserve-s", type=float, default=120.0, help="No run starts in the budget's last this many s."
    )
    p.add_argument("--jobs", type=int, default=4, help="Runs at a time on the one GPU.")
    p.add_argument("--steps", type=int, default=1000, help="Steps per run (>= 1000 for the corpus).")
    p.add_argument("--mechanisms", nargs="*", default=list(MECHANISMS), choices=MECHANISMS)
    p.add_argument("--reuse", action="store_true", help="Score what OUT holds; train nothing.")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "gpu_detection: no CUDA device here; this command only runs on a GPU machine "
            "(on CPU, build the corpus with `bench/detection.py --corpus v2 --preset tiny|small`)"
        )
    from bench.corpus_v2_score import report

    t0 = time.monotonic()
    out = Path(args.out)
    if not args.reuse:
        cells = grid(PRESET, mechanisms=args.mechanisms, spec=gpu_spec(args.steps))
        try:
            build(
                cells,
                out,
                PRESET,
                jobs=args.jobs,
                device="cuda",
                deadline=t0 + args.budget_s - args.reserve_s,
            )
        except RuntimeError as e:  # some runs failed: score the others, say so
            print(f"gpu_detection: {e}", file=sys.stderr, flush=True)
        print(f"{out}: {len(cells)} runs in the grid; built in {time.monotonic() - t0:.0f}s", flush=True)
    result = report(out)
    print(result["markdown"])
    print(f"total {time.monotonic() - t0:.0f}s", flush=True)
    return result


if __name__ == "__main__":
    main()
