"""Tiny models and data for the integration tests: GPT-2, Llama and stabmon's GPT built from
configs (no download), random byte sequences, and sinks that play the collector's alerts."""

from __future__ import annotations

import threading

import torch

from trainer_hooks.client import MemorySink


def tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=4))


def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


class RandomBytes(torch.utils.data.Dataset):
    """Causal-LM examples of random bytes: ``{"input_ids", "labels"}``, each (T,)."""

    def __init__(self, n: int = 64, block_size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 256, (n, block_size), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def critical_alert(step: int, rule: str = "loss_non_finite") -> dict:
    """An alert as the collector's ingest answer carries it (AlertPublic fields)."""
    return {
        "id": 1,
        "run_id": "r",
        "rule": rule,
        "severity": "critical",
        "status": "open",
        "step": step,
        "last_step": step,
        "message": f"{rule} at step {step}",
        "evidence": {},
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }


class AlertingSink(MemorySink):
    """A `MemorySink` that, on receiving the record of ``alert_at``, delivers a critical alert to
    ``on_alert`` from another thread, as the client's sender thread would."""

    def __init__(self, alert_at: int) -> None:
        super().__init__()
        self.alert_at = alert_at
        self.on_alert = None
        self.delivered = threading.Event()

    def write(self, record: dict) -> None:
        super().write(record)
        if record["step"] == self.alert_at and self.on_alert is not None:
            t = threading.Thread(target=self._deliver, args=(record["step"],))
            t.start()
            t.join()

    def _deliver(self, step: int) -> None:
        self.on_alert(critical_alert(step))
        self.delivered.set()
