"""A Hugging Face ``Trainer`` run monitored by stabmon: one callback in ``callbacks=[...]``.

The model is a small GPT-2 or Llama built from a config (no download), trained on byte
sequences from the built-in corpus (the Python standard library's sources), a file
(``--data PATH``) or random bytes (``--data random``). Statistics stream to a collector started
with ``stabmon serve`` (``--url``/``--token`` or ``$STABMON_URL``/``$STABMON_TOKEN``); with
``--on-alert stop`` a critical alert saves a checkpoint and stops the Trainer::

    stabmon serve &                     # prints a token on first start
    export STABMON_URL=http://127.0.0.1:8321 STABMON_TOKEN=...
    python examples/hf_trainer.py --arch llama --steps 100
    torchrun --nproc_per_node 2 examples/hf_trainer.py --steps 50   # DDP: one record per step
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from trainer_hooks.integrations.hf import StabmonCallback  # stabmon
from trainer_hooks.lab.data import ByteCorpus


class ByteSequences(torch.utils.data.Dataset):
    """``n`` fixed windows of ``block_size`` bytes, as causal-LM examples (labels = inputs)."""

    def __init__(self, data: str, n: int, block_size: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        if data == "random":
            self.ids = torch.randint(0, 256, (n, block_size), generator=g)  # (n, T)
        else:
            corpus = ByteCorpus(None if data == "default" else data, block_size)
            self.ids, _ = corpus.batch("train", n, g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def build_model(arch: str, block_size: int) -> torch.nn.Module:
    if arch == "gpt2":
        config = GPT2Config(vocab_size=256, n_positions=block_size, n_embd=64, n_layer=2, n_head=4)
        return GPT2LMHeadModel(config)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=block_size,
    )
    return LlamaForCausalLM(config)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=None, help="collector URL (default $STABMON_URL)")
    p.add_argument("--token", default=None, help="project token (default $STABMON_TOKEN)")
    p.add_argument("--on-alert", default="log", choices=["log", "stop"])
    p.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--data", default="default", help="'default' (stdlib sources), 'random' or a file")
    p.add_argument("--output-dir", default=None, help="checkpoints (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    torch.manual_seed(args.seed)
    model = build_model(args.arch, args.block_size)
    n_examples = args.steps * args.batch_size * args.grad_accum
    train_dataset = ByteSequences(args.data, n_examples, args.block_size, args.seed)
    training_args = TrainingArguments(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="stabmon-hf-"),
        run_name=f"hf-{args.arch}-lr{args.lr:g}",
        max_steps=args.steps,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        disable_tqdm=True,
    )

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        callbacks=[StabmonCallback(url=args.url, token=args.token, on_alert=args.on_alert)],  # stabmon
    )
    trainer.train()


if __name__ == "__main__":
    main()
