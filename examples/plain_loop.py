"""A nanoGPT-style training loop in plain PyTorch, monitored by stabmon with two added lines.

The loop is the usual one (batch, forward, backward, clip, step); stabmon adds
``mon = attach(...)`` before it and ``mon.step(...)`` at the end of each step (the lines marked
``# stabmon``, with the sink that says where records go). ``--tensorboard DIR`` mirrors every
series into TensorBoard as well, ``--wandb PROJECT`` into Weights & Biases (``WANDB_MODE=offline``
keeps it on the machine). Statistics stream
to a collector started with ``stabmon serve`` (the URL and token come from ``--url``/``--token``
or ``$STABMON_URL``/``$STABMON_TOKEN``); without a URL they are computed and dropped. The model
is stabmon's byte-level GPT at a size preset, trained on the built-in corpus (the Python
standard library's sources), a file (``--data PATH``) or random bytes (``--data random``)::

    stabmon serve &                     # prints a token on first start
    export STABMON_URL=http://127.0.0.1:8321 STABMON_TOKEN=...
    python examples/plain_loop.py --steps 200 --lr 3e-3
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

from trainer_hooks.client import Client, FanoutSink, NullSink, RunInfo  # stabmon
from trainer_hooks.hooks import attach  # stabmon
from trainer_hooks.integrations.tensorboard import TensorBoardSink
from trainer_hooks.integrations.wandb import WandbSink
from trainer_hooks.lab.config import preset
from trainer_hooks.lab.data import ByteCorpus
from trainer_hooks.lab.model import GPT


def batches(data: str, block_size: int, batch_size: int, seed: int) -> Callable[[], tuple]:
    """A function returning (inputs, targets), each (B, T) byte ids: random bytes or a corpus."""
    g = torch.Generator().manual_seed(seed)
    if data == "random":

        def random_batch() -> tuple[torch.Tensor, torch.Tensor]:
            xy = torch.randint(0, 256, (batch_size, block_size + 1), generator=g)  # (B, T+1)
            return xy[:, :-1], xy[:, 1:]

        return random_batch
    corpus = ByteCorpus(None if data == "default" else data, block_size)
    return lambda: corpus.batch("train", batch_size, g)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("STABMON_URL"), help="collector URL ($STABMON_URL)")
    p.add_argument("--token", default=os.environ.get("STABMON_TOKEN"), help="project token ($STABMON_TOKEN)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--preset", default="tiny", help="model size: tiny, small, medium")
    p.add_argument(
        "--variant", default="baseline", help="baseline, qk_norm, qk_fc_norm, qkv_norm, qk_norm_cap"
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default="default", help="'default' (stdlib sources), 'random' or a file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="run name (default: plain-<variant>-lr<lr>)")
    p.add_argument("--tensorboard", default=None, metavar="LOGDIR", help="also write TensorBoard events here")
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to this W&B project")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    config = preset(args.preset, variant=args.variant)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    get_batch = batches(args.data, config.block_size, args.batch_size, args.seed)
    name = args.name or f"plain-{args.variant}-lr{args.lr:g}"
    config_dict = {"variant": args.variant, "lr": args.lr, "preset": args.preset}
    run = RunInfo(name=name, config=config_dict)  # stabmon
    sink = Client(args.url, token=args.token, run=run) if args.url else NullSink()  # stabmon
    if args.wandb:  # also mirror to Weights & Biases, with stabmon's alerts as W&B alerts
        import wandb

        mirror = WandbSink(wandb.init(project=args.wandb, config=config_dict), alerts_from=sink)
        sink = FanoutSink(sink, mirror)
    if args.tensorboard:
        sink = FanoutSink(sink, TensorBoardSink(args.tensorboard))  # also mirror to TensorBoard

    model.train()
    t0 = time.perf_counter()
    mon = attach(model, sink=sink)  # stabmon
    for step in range(args.steps):
        x, y = get_batch()
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        mon.step(loss=loss, lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm)  # stabmon
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}")
    mon.remove()  # stabmon: detach the hooks, hand over the last record
    sink.close()  # stabmon: deliver what is queued, mark the run finished
    if args.wandb:
        wandb.finish()
    dt = time.perf_counter() - t0
    print(f"{args.steps} steps in {dt:.1f} s; run {name!r} -> {args.url or 'nowhere (no --url)'}")


if __name__ == "__main__":
    main()
