"""The paper's comparisons from a finished ``stabmon sweep``: stable LR range, loss, LR sensitivity.

Reads a sweep directory (``results.json`` rows and the per-run files of `trainer_hooks.lab.sweep`)
and computes, per variant: the maximum stable learning rate on the grid (the largest LR at which
no seed diverged), the final validation loss and perplexity at every LR (mean over the seeds),
and the LR sensitivity of Wortsman et al. 2023 (the mean over the grid of
``min(loss(lr), initial loss) - best loss``, with a diverged or non-finite loss counted as the
initial loss). It writes the markdown tables (``sweep_results.md``) and JSON next to the sweep,
and the figures (validation loss vs LR, loss curves, per-layer norm trajectories of a diverging
and converging runs of one variant) to ``--img``.

    .venv/bin/python bench/sweep_results.py out/corpus/small/warmup [--img docs/img] [--tag small]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer_hooks.lab.sweep_results import max_stable_lr  # noqa: E402


def _mean(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def relabel(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``diverged``/``diverged_at``/``outcome``/``divergence_kind`` recomputed by
    the current divergence definition from the run's recorded loss history, so the tables never
    carry labels from an older one."""
    from stabmon.divergence import DivergenceConfig, label_run
    from stabmon.wire import decode_value

    d = json.loads(path.read_text())
    losses = [decode_value(v) if isinstance(v, str) else float(v) for v in d.get("losses") or []]
    if not losses:
        return row
    label = label_run(losses, DivergenceConfig(plateau_loss=d.get("plateau_loss")))
    return {
        **row,
        "diverged": label.diverged,
        "diverged_at": label.onset if label.diverged else None,
        "outcome": label.outcome,
        "divergence_kind": label.kind,
    }


def loss_table(rows: Sequence[dict[str, Any]]) -> dict[str, dict[float, dict[str, Any]]]:
    """variant -> lr -> mean final validation loss / perplexity over seeds, and diverged seeds."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for r in rows:
        cell = out.setdefault(r["variant"], {}).setdefault(r["lr"], {"val": [], "diverged": 0, "seeds": 0})
        cell["seeds"] += 1
        cell["diverged"] += bool(r["diverged"])
        cell["val"].append(r["val_loss"])
    for v in out.values():
        for cell in v.values():
            vals = cell.pop("val")
            cell["val_loss"] = _mean(vals)
            cell["val_ppl"] = math.exp(cell["val_loss"]) if cell["val_loss"] is not None else None
    return out


def lr_sensitivity(
    rows: Sequence[dict[str, Any]], initial_loss: float = math.log(256)
) -> dict[str, float | None]:
    """Wortsman et al.'s LR sensitivity per variant, on the final validation loss (seed mean):
    ``mean_lr min(loss(lr), initial) - min_lr loss(lr)``; diverged seeds count as ``initial``."""
    out: dict[str, float | None] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        per_lr: dict[float, list[float]] = {}
        for r in rows:
            if r["variant"] != variant:
                continue
            v = r["val_loss"]
            bad = r["diverged"] or v is None or not math.isfinite(v)
            per_lr.setdefault(r["lr"], []).append(initial_loss if bad else min(v, initial_loss))
        losses = [sum(v) / len(v) for v in per_lr.values()]
        out[variant] = sum(losses) / len(losses) - min(losses) if losses else None
    return out


def pick_norm_runs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of one variant and seed (baseline first) for the norm-trajectory figure: the stable run
    with the best validation loss, the largest stable LR below the first diverging one (when that
    is another run), and the first diverging run. Empty if no variant has both kinds."""
    for variant in ["baseline", *dict.fromkeys(r["variant"] for r in rows)]:
        for seed in sorted({r["seed"] for r in rows}):
            mine = sorted(
                (r for r in rows if r["variant"] == variant and r["seed"] == seed), key=lambda r: r["lr"]
            )
            div = next((r for r in mine if r["diverged"]), None)
            ok = [r for r in mine if not r["diverged"] and r["lr"] < (div["lr"] if div else 0)]
            if div is None or not ok:
                continue
            best = min(ok, key=lambda r: r["val_loss"] if r["val_loss"] is not None else math.inf)
            return [best] + ([ok[-1]] if ok[-1] is not best else []) + [div]
    return []


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    table = loss_table(rows)
    lrs = sorted({r["lr"] for r in rows})
    stable = max_stable_lr(rows)
    sens = lr_sensitivity(rows)
    md = "| variant | max stable LR | LR sensitivity | " + " | ".join(f"LR {lr:g}" for lr in lrs) + " |\n"
    md += "|---" * (3 + len(lrs)) + "|\n"
    for v, per_lr in table.items():
        cells = []
        for lr in lrs:
            c = per_lr.get(lr)
            if c is None:
                cells.append("-")
                continue
            loss = "-" if c["val_loss"] is None else f"{c['val_loss']:.3f} ({c['val_ppl']:.2f})"
            mark = f" **{c['diverged']}/{c['seeds']} div**" if c["diverged"] else ""
            cells.append(loss + mark)
        s = "-" if stable[v] is None else f"{stable[v]:g}"
        md += f"| {v} | {s} | {sens[v]:.3f} | " + " | ".join(cells) + " |\n"
    return md


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="A sweep output directory (results.json, runs/).")
    p.add_argument("--img", default="docs/img")
    p.add_argument("--tag", default="", help="Suffix of the figure names (e.g. the preset).")
    args = p.parse_args(argv)

    from trainer_hooks.client.sinks import read_jsonl
    from trainer_hooks.lab.sweep import load_detail, load_row
    from trainer_hooks.lab.sweep_plots import plot_loss_curves, plot_loss_vs_lr, plot_norm_trajectories

    out = Path(args.sweep)
    rows = sorted(
        (relabel(p, load_row(p)) for p in (out / "runs").glob("*.json")),
        key=lambda r: (r["variant"], r["lr"], r["seed"]),
    )
    if not rows:
        raise SystemExit(f"no finished runs under {out}/runs")
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""
    stable = max_stable_lr(rows)
    ratios = {
        f"{v} / qk_norm": (stable[v] / stable["qk_norm"]) if stable.get(v) and stable.get("qk_norm") else None
        for v in ("qkv_norm", "qk_norm_cap", "qk_fc_norm", "baseline")
        if v in stable
    }
    plot_loss_vs_lr(rows, img / f"sweep_loss_vs_lr{tag}.png")
    seed0 = min(r["seed"] for r in rows)
    plot_loss_curves(
        [load_detail(out, r["name"]) for r in rows if r["seed"] == seed0],
        img / f"sweep_loss_curves{tag}.png",
        f"Training loss per learning rate (seed {seed0})",
    )
    picked = pick_norm_runs(rows)
    if picked:

        def label(r: dict[str, Any]) -> str:
            val = "-" if r["val_loss"] is None else f"{r['val_loss']:.2f}"
            state = f"diverges at {r['diverged_at']}" if r["diverged"] else "stable"
            return f"{r['name']}: {state}, val {val}"

        plot_norm_trajectories(
            [(label(r), read_jsonl(out / "runs" / f"{r['name']}.jsonl"), r["diverged_at"]) for r in picked],
            img / f"sweep_norms{tag}.png",
            title=f"Per-layer output norms (l2_mean) and attention-logit maxima, {picked[0]['variant']}",
        )
    md = markdown(rows)
    result = {
        "runs": len(rows),
        "max_stable_lr": stable,
        "ratios": ratios,
        "lr_sensitivity": lr_sensitivity(rows),
        "losses": {v: {str(k): c for k, c in t.items()} for v, t in loss_table(rows).items()},
        "norm_runs": [r["name"] for r in picked],
    }
    (out / "sweep_results.md").write_text(md)
    (out / "sweep_results.json").write_text(json.dumps(result, indent=1))
    print(md)
    print(
        json.dumps(
            {k: result[k] for k in ("max_stable_lr", "ratios", "lr_sensitivity", "norm_runs")}, indent=1
        )
    )
    return result


if __name__ == "__main__":
    main()
