"""Plots of a sweep: validation loss against learning rate, loss curves, per-layer norm trajectories.

`plot_sweep(out, rows)` draws the two summary figures of a finished (or partial) sweep from its
result rows and per-cell histories (`trainer_hooks.lab.sweep`): ``loss_vs_lr.png`` (final
validation loss per variant and LR, one marker per seed, diverged runs crossed out) and
``loss_curves.png`` (smoothed training loss of every LR, one panel per variant, first seed).
`plot_norm_trajectories` draws the per-layer QKV/Proj/FC2 output norms and attention-logit
maxima of a few runs side by side (converging and diverging ones), the paper's precursor
signals. matplotlib runs on the Agg backend, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stabmon.wire import layer_key, match_layer_key

LOSS_CAP = 6.0
"""Losses are drawn clipped to this (an untrained byte model sits at ln 256 = 5.5 nats), so one
blow-up to 1e3 does not flatten every other curve."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: Sequence[Any], k: int = 9) -> list[float]:
    """Centered rolling median; non-finite values are drawn at the cap."""
    vals = [
        LOSS_CAP if not isinstance(v, (int, float)) or not math.isfinite(v) else min(v, LOSS_CAP)
        for v in values
    ]
    out = []
    h = k // 2
    for i in range(len(vals)):
        w = sorted(vals[max(0, i - h) : i + h + 1])
        out.append(w[len(w) // 2])
    return out


def _variants(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in rows))


def plot_loss_vs_lr(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Final validation loss against peak LR, one line per variant (mean over the seeds that did
    not diverge), every seed as a marker; a diverged seed is an x at its (capped) loss."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=90)
    for v in _variants(rows):
        mine = [r for r in rows if r["variant"] == v]
        lrs = sorted({r["lr"] for r in mine})
        means = []
        for lr in lrs:
            ok = [
                r["val_loss"]
                for r in mine
                if r["lr"] == lr and not r["diverged"] and r["val_loss"] is not None
            ]
            means.append(sum(ok) / len(ok) if ok else math.nan)
        (line,) = ax.plot(lrs, means, "-o", label=v, markersize=4)
        for r in mine:
            if r["diverged"]:
                y = r["val_loss"] if r["val_loss"] is not None and math.isfinite(r["val_loss"]) else LOSS_CAP
                ax.plot([r["lr"]], [min(y, LOSS_CAP)], "x", color=line.get_color(), markersize=8)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss (nats/byte)")
    ax.set_title(title or "Validation loss vs learning rate (x = diverged seed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_loss_curves(details: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Smoothed training loss per LR, one panel per variant (``details``: result JSONs with history)."""
    plt = _plt()
    variants = _variants(details)
    cols = min(3, len(variants))
    nrows = math.ceil(len(variants) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), dpi=90, squeeze=False)
    lrs = sorted({d["lr"] for d in details})
    cmap = plt.get_cmap("viridis")
    colors = {lr: cmap(i / max(1, len(lrs) - 1)) for i, lr in enumerate(lrs)}
    for ax, v in zip(axes.flat, variants, strict=False):
        for d in sorted((d for d in details if d["variant"] == v), key=lambda d: d["lr"]):
            style = "--" if d["diverged"] else "-"
            ax.plot(_smooth(d["losses"]), style, color=colors[d["lr"]], label=f"{d['lr']:g}", lw=1.2)
        ax.set_title(v, fontsize=10)
        ax.set_ylim(1.5, LOSS_CAP)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (median of 9)")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(variants) :]:
        ax.axis("off")
    axes.flat[0].legend(title="LR (-- diverged)", fontsize=7, title_fontsize=7)
    fig.suptitle(title or "Training loss per learning rate")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_norm_trajectories(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]], int | None]],
    path: str | Path,
    sites: Sequence[str] = ("qkv", "proj", "fc2", "attn.logit_max"),
    stat: str = "l2_mean",
    title: str = "",
) -> Path:
    """Per-layer output norms of a few runs side by side: ``runs`` is ``[(label, records,
    diverged_at), ...]`` with records as read by `trainer_hooks.client.read_jsonl`; one column per
    run, one row per site (``"site"`` draws ``stat``, ``"site.stat"`` that statistic), one line per
    layer, a vertical line at the divergence step."""
    plt = _plt()
    fig, axes = plt.subplots(
        len(sites), len(runs), figsize=(4.4 * len(runs), 2.6 * len(sites)), dpi=90, squeeze=False
    )
    for j, (label, records, diverged_at) in enumerate(runs):
        layers = sorted({parts[0] for r in records for k in r["values"] if (parts := match_layer_key(k))})
        for i, site in enumerate(sites):
            ax = axes[i][j]
            for layer in layers:
                # ``site`` is a site ("fc2", with ``stat``) or a site and its stat ("attn.logit_max").
                key = layer_key(layer, *site.split(".", 1)) if "." in site else layer_key(layer, site, stat)
                pts = [(r["step"], r["values"][key]) for r in records if key in r["values"]]
                pts = [(s, v) for s, v in pts if math.isfinite(v) and v > 0]
                if pts:
                    ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1.1, label=f"layer {layer}")
            if diverged_at is not None:
                ax.axvline(diverged_at, color="red", ls="--", lw=1, label="divergence")
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.set_ylabel(site.replace(".", " ") if "." in site else f"{site} {stat}")
            if i == 0:
                ax.set_title(label, fontsize=9)
            if i == len(sites) - 1:
                ax.set_xlabel("step")
        axes[0][j].legend(fontsize=6)
    fig.suptitle(title or f"Per-layer output norms ({stat})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_sweep(out: str | Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """The sweep's summary figures under ``out``; returns their paths."""
    import json

    out = Path(out)
    paths = [plot_loss_vs_lr(rows, out / "loss_vs_lr.png")]
    first_seed = min(r["seed"] for r in rows)
    first_warmup = rows[0]["warmup"]
    details = []
    for r in rows:
        if r["seed"] == first_seed and r["warmup"] == first_warmup:
            p = out / "runs" / f"{r['name']}.json"
            if p.exists():
                details.append(json.loads(p.read_text()))
    if details:
        paths.append(plot_loss_curves(details, out / "loss_curves.png", f"Training loss, seed {first_seed}"))
    return paths
