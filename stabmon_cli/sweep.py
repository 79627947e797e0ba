"""``stabmon sweep``: train a grid of variants x learning rates x seeds and tabulate the outcome.

A thin shell over `trainer_hooks.lab.sweep.run_sweep`: it parses the comma-separated grid, prints a
line per finished run on stderr and a summary table at the end (maximum stable LR per variant),
and leaves ``results.csv``, ``results.json``, the plots and one series file per run in ``--out``.
Re-running the same command skips the runs already finished. torch is imported by the sweep's
worker processes, not here, so ``stabmon --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from None


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated integers, got {text!r}") from None


def sweep_cmd(
    variants: str = typer.Option(
        "baseline,qk_norm,qk_fc_norm,qkv_norm,qk_norm_cap", help="Comma-separated norm variants."
    ),
    lrs: str = typer.Option("3e-3,1e-2,3e-2,1e-1,3e-1,1", help="Comma-separated peak learning rates."),
    seeds: str = typer.Option("0,1", help="Comma-separated seeds."),
    steps: int = typer.Option(None, help="Steps per run (default: the preset's)."),
    preset: str = typer.Option("small", help="Model size: tiny | small | medium."),
    warmup: str = typer.Option(
        None, help="Warmup steps, or a comma-separated list to sweep (default: the preset's)."
    ),
    out: Path = typer.Option(Path("runs/sweep"), help="Output directory (re-running resumes it)."),
    jobs: int = typer.Option(None, help="Runs in parallel, one torch thread each (default: the CPU count)."),
    early_stop: bool = typer.Option(False, help="Stop a run at the detector's first critical finding."),
    detector: str = typer.Option(
        None, help="Detector overrides as JSON, e.g. '{\"logit_max.critical\": 1000}'."
    ),
    collector: str = typer.Option(None, help="Also stream every run to the stabmon collector at this URL."),
    token: str = typer.Option(None, envvar="STABMON_TOKEN", help="Collector ingest token."),
    project: str = typer.Option(None, help="Collector project (default: the token's)."),
    plots: bool = typer.Option(True, help="Write loss_vs_lr.png and loss_curves.png."),
    as_json: bool = typer.Option(False, "--json", help="Print the result rows as JSON on stdout."),
) -> None:
    """Train a grid of norm variants x learning rates x seeds (resumable, in parallel)."""
    import os

    from rich.console import Console
    from rich.table import Table

    from trainer_hooks.lab.sweep import SweepConfig, config_dict, run_sweep

    console = Console(stderr=True)
    try:
        overrides = json.loads(detector) if detector else {}
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"--detector is not valid JSON: {e}") from None
    try:
        cfg = SweepConfig(
            variants=tuple(v.strip() for v in variants.split(",") if v.strip()),
            lrs=_floats(lrs, "--lrs"),
            seeds=_ints(seeds, "--seeds"),
            warmups=_ints(warmup, "--warmup") if warmup else (None,),
            steps=steps,
            preset=preset,
            out=str(out),
            jobs=jobs if jobs is not None else (os.cpu_count() or 1),
            early_stop=early_stop,
            detector=overrides,
            collector=collector,
            token=token,
            project=project,
            plots=plots,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(config_dict(cfg), indent=1))
    total = len(cfg.cells())

    def show(row: dict, done: int, todo: int) -> None:
        if row["stopped_early"]:
            state = f"stopped at step {row['first_critical_step']} ({row['first_critical_rule']}, critical)"
            if row["diverged"]:
                state += f", loss diverged at {row['diverged_at']}"
        else:
            state = f"diverged at {row['diverged_at']}" if row["diverged"] else "stable"
        val = "-" if row["val_loss"] is None else f"{row['val_loss']:.3f}"
        console.print(f"[{done}/{todo}] {row['name']}: val {val}, {state}, {row['wall_s']:.0f}s")

    console.print(f"sweep: {total} runs in {out} ({jobs or os.cpu_count()} at a time)")
    try:
        rows = run_sweep(cfg, on_done=show)
    except RuntimeError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None

    from trainer_hooks.lab.sweep_results import max_stable_lr

    table = Table(title="maximum stable LR (no seed diverged or was stopped, at it or below)")
    table.add_column("variant")
    table.add_column("max stable LR")
    for v, lr in max_stable_lr(rows).items():
        table.add_row(v, "-" if lr is None else f"{lr:g}")
    console.print(table)
    if as_json:
        typer.echo(json.dumps(rows, allow_nan=False))
