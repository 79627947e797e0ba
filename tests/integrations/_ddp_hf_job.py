"""One rank of a two-process DDP run of the Hugging Face Trainer with `StabmonCallback` (CPU, gloo).

Started by ``torch.distributed.run`` from ``test_ddp_hf.py``. Rank 0's sink writes JSONL and, when
it receives the record of ``--alert-at``, delivers a critical alert from another thread, as the
collector client would; rank 1's sink writes its own JSONL (which stays empty: records are
reduced and rank 0 alone writes). Each rank ends by writing where it stopped to ``rank{r}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from tests.integrations._tiny import RandomBytes, critical_alert, tiny_gpt2
from trainer_hooks.client import JsonlSink
from trainer_hooks.integrations.hf import StabmonCallback


class AlertingJsonl(JsonlSink):
    def __init__(self, path: Path, alert_at: int) -> None:
        super().__init__(path, flush_every=1)
        self.alert_at = alert_at
        self.on_alert = None

    def write(self, record: dict) -> None:
        super().write(record)
        if record["step"] == self.alert_at and self.on_alert is not None:
            self.on_alert(critical_alert(record["step"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--alert-at", type=int, default=-1)
    args = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    sink = AlertingJsonl(args.out / f"records{rank}.jsonl", args.alert_at if rank == 0 else -1)
    callback = StabmonCallback(sink=sink, on_alert="stop")
    sink.on_alert = callback.alerts
    training_args = TrainingArguments(
        output_dir=str(args.out / "ckpt"),
        report_to=[],
        use_cpu=True,
        max_steps=args.steps,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=tiny_gpt2(), args=training_args, train_dataset=RandomBytes(64, seed=rank), callbacks=[callback]
    )
    trainer.train()
    sink.close()
    result = {
        "rank": rank,
        "world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        "global_step": trainer.state.global_step,
        "stopped_at": callback.stopped_at,
        "log_history": trainer.state.log_history,
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        # Left to interpreter exit, gloo's threads can be torn down while still joinable
        # ("terminate called without an active exception", rank aborted) on a loaded machine:
        # both ranks finish together, then close the group (the pattern torch's examples use).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
