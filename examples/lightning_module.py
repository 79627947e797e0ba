"""A PyTorch Lightning run monitored by stabmon: one callback in ``L.Trainer(callbacks=[...])``.

The ``LightningModule`` wraps stabmon's byte-level GPT at a size preset and norm variant and
trains it on the built-in corpus (the Python standard library's sources), a file
(``--data PATH``) or random bytes (``--data random``). Statistics stream to a collector
started with ``stabmon serve`` (``--url``/``--token`` or ``$STABMON_URL``/``$STABMON_TOKEN``);
with ``--on-alert stop`` a critical alert saves a checkpoint and stops the fit::

    stabmon serve &                     # prints a token on first start
    export STABMON_URL=http://127.0.0.1:8321 STABMON_TOKEN=...
    python examples/lightning_module.py --variant qk_norm --lr 1e-2 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile

import lightning as L
import torch

from trainer_hooks.integrations.lightning import StabmonCallback  # stabmon
from trainer_hooks.lab.config import preset
from trainer_hooks.lab.data import ByteCorpus
from trainer_hooks.lab.model import GPT


class LitGPT(L.LightningModule):
    def __init__(self, preset_name: str = "tiny", variant: str = "baseline", lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()  # preset_name, variant and lr become the run's config
        self.model = GPT(preset(preset_name, variant=variant))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T) byte ids and next-byte targets
        _, loss = self.model(x, y)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, betas=(0.9, 0.95), weight_decay=0.1)


def byte_windows(data: str, n: int, block_size: int, seed: int) -> torch.utils.data.TensorDataset:
    """``n`` windows of ``block_size + 1`` bytes as (inputs, targets) pairs."""
    g = torch.Generator().manual_seed(seed)
    if data == "random":
        xy = torch.randint(0, 256, (n, block_size + 1), generator=g)  # (n, T+1)
        return torch.utils.data.TensorDataset(xy[:, :-1], xy[:, 1:])
    corpus = ByteCorpus(None if data == "default" else data, block_size)
    return torch.utils.data.TensorDataset(*corpus.batch("train", n, g))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=None, help="collector URL (default $STABMON_URL)")
    p.add_argument("--token", default=None, help="project token (default $STABMON_TOKEN)")
    p.add_argument("--on-alert", default="log", choices=["log", "stop"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--preset", default="tiny", help="model size: tiny, small, medium")
    p.add_argument(
        "--variant", default="baseline", help="baseline, qk_norm, qk_fc_norm, qkv_norm, qk_norm_cap"
    )
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default="default", help="'default' (stdlib sources), 'random' or a file")
    p.add_argument("--output-dir", default=None, help="checkpoints (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    module = LitGPT(args.preset, args.variant, args.lr)
    dataset = byte_windows(args.data, args.steps * args.batch_size, module.model.config.block_size, args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)

    trainer = L.Trainer(
        max_steps=args.steps,
        gradient_clip_val=1.0,
        default_root_dir=args.output_dir or tempfile.mkdtemp(prefix="stabmon-lightning-"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StabmonCallback(url=args.url, token=args.token, on_alert=args.on_alert)],  # stabmon
    )
    trainer.fit(module, loader)


if __name__ == "__main__":
    main()
