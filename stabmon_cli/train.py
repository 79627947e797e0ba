"""``stabmon train``: train the byte-level GPT with one norm variant and report the outcome.

A thin shell over `trainer_hooks.lab.train.train`: it builds a `TrainConfig` from the options, shows
a progress bar (loss, LR, tokens/s) on stderr, and with ``--json`` prints one JSON object on
stdout at the end (`TrainResult.to_dict`, non-finite numbers as "nan"/"inf" strings). With
``--collector URL`` it streams activation statistics to a stabmon collector
(`trainer_hooks.lab.remote.run_monitored`: the run is closed as finished, diverged or stopped) and
with ``--on-alert log|stop|rollback`` acts on the collector's alerts (`trainer_hooks.actions`).
torch is imported inside the command, so ``stabmon --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def train_cmd(
    variant: str = typer.Option(
        "baseline", help="baseline | qk_norm | qk_fc_norm | qkv_norm | qk_norm_cap | soft_cap"
    ),
    lr: float = typer.Option(None, help="Peak learning rate (default: the preset's)."),
    steps: int = typer.Option(None, help="Optimizer steps (default: the preset's)."),
    preset: str = typer.Option("small", help="Model size: tiny | small | medium."),
    data: Path = typer.Option(None, help="Text file or directory (default: the built-in stdlib corpus)."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(None, help="Directory for checkpoints and result.json."),
    warmup: int = typer.Option(None, help="Linear warmup steps (default: the preset's)."),
    batch_size: int = typer.Option(None, help="Sequences per batch (default: the preset's)."),
    grad_clip: float = typer.Option(1.0, help="Clip the global grad norm (0 disables)."),
    eval_every: int = typer.Option(None, help="Evaluate every N steps (0: only at the end)."),
    eval_batches: int = typer.Option(None),
    checkpoint_every: int = typer.Option(0, help="Save a checkpoint every N steps (needs --out)."),
    resume: Path = typer.Option(None, help="Resume from this checkpoint."),
    stop_on_divergence: bool = typer.Option(False, help="Stop when the loss diverges (stabmon.divergence)."),
    softmax_cap: float = typer.Option(None, help="The cap c of the capping variants (default 50)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    threads: int = typer.Option(None, help="torch intra-op threads."),
    collector: str = typer.Option(None, help="Stream statistics to the stabmon collector at this URL."),
    token: str = typer.Option(None, envvar="STABMON_TOKEN", help="Collector ingest token."),
    project: str = typer.Option(None, help="Collector project (default: the token's)."),
    name: str = typer.Option(None, help="Run name (default: {variant}-lr{lr}-s{seed})."),
    monitor_every: int = typer.Option(1, help="Record activation statistics every N steps."),
    on_alert: str = typer.Option(
        None, "--on-alert", help="Act on the collector's alerts: log | stop | rollback (needs --collector)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
) -> None:
    """Train the byte-level GPT with one norm variant."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trainer_hooks.lab.train import TrainConfig, train

    if checkpoint_every and out is None:
        raise typer.BadParameter("--checkpoint-every needs --out")
    if data is not None and not data.exists():
        raise typer.BadParameter(f"--data {data}: no such file or directory")
    if resume is not None and not resume.is_file():
        raise typer.BadParameter(f"--resume {resume}: no such checkpoint")
    try:
        cfg = TrainConfig(
            variant=variant,
            preset=preset,
            lr=lr,
            steps=steps,
            warmup=warmup,
            batch_size=batch_size,
            grad_clip=grad_clip,
            seed=seed,
            data=str(data) if data else None,
            out=str(out) if out else None,
            eval_every=eval_every,
            eval_batches=eval_batches,
            checkpoint_every=checkpoint_every,
            monitor_every=monitor_every,
            stop_on_divergence=stop_on_divergence,
            device=device,
            threads=threads,
            model={"softmax_cap": softmax_cap} if softmax_cap is not None else {},
            name=name,
        ).resolved()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    if on_alert is not None and (on_alert not in ("log", "stop", "rollback") or not collector):
        raise typer.BadParameter("--on-alert is log, stop or rollback, and needs --collector")

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s"),
        TimeRemainingColumn(),
        console=console,
        transient=as_json,
    )
    task = progress.add_task(cfg.name, total=cfg.steps, loss="-", lr="-", tps="-")

    def show(info) -> None:
        progress.update(
            task,
            completed=info.step + 1,
            loss=f"{info.loss:.4f}",
            lr=f"{info.lr:.2e}",
            tps=f"{info.tokens_per_s:,.0f}",
        )

    with progress:
        if collector:  # streams to the collector, acts on its alerts, closes the run with its status
            from trainer_hooks.lab.remote import run_monitored

            monitored = run_monitored(
                cfg,
                collector=collector,
                token=token,
                project=project,
                on_alert=on_alert,
                callbacks=[show],
                resume=resume,
            )
            result = monitored.result
        else:
            result = train(cfg, callbacks=[show], resume=resume)

    if as_json:
        typer.echo(json.dumps(result.to_dict(), allow_nan=False))
    else:
        div = f"diverged at step {result.diverged_at}" if result.diverged else "did not diverge"
        val = "-" if result.val_loss is None else f"{result.val_loss:.4f} (ppl {result.val_ppl:.2f})"
        console.print(
            f"{result.name}: {result.steps_run} steps, final loss {result.final_loss:.4f}, "
            f"val loss {val}, {div}, {result.tokens_per_s:,.0f} tok/s"
        )
