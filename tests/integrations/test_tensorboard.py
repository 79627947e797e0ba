"""`TensorBoardSink`: records written as scalars, read back from the event file."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from trainer_hooks.client import FanoutSink, MemorySink  # noqa: E402
from trainer_hooks.hooks import attach  # noqa: E402
from trainer_hooks.integrations.tensorboard import TensorBoardSink  # noqa: E402
from trainer_hooks.lab.config import GPTConfig  # noqa: E402
from trainer_hooks.lab.model import GPT  # noqa: E402


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_records_come_back_as_scalars_including_non_finite(tmp_path):
    sink = TensorBoardSink(tmp_path)
    sink.write({"step": 0, "rank": 0, "values": {"loss": 5.5, "layer.0.fc2.l2_mean": 3.0}})
    sink.write({"step": 1, "rank": 0, "values": {"loss": float("nan"), "layer.0.fc2.l2_mean": float("inf")}})
    sink.write({"step": 1, "rank": 1, "values": {"loss": 4.0}})
    sink.close()
    sink.write({"step": 2, "rank": 0, "values": {"loss": 1.0}})  # after close: ignored

    scalars = _scalars(tmp_path)
    assert set(scalars) == {"loss", "layer.0.fc2.l2_mean", "rank1/loss"}
    (s0, v0), (s1, v1) = scalars["loss"]
    assert (s0, v0, s1) == (0, 5.5, 1) and math.isnan(v1)
    assert scalars["layer.0.fc2.l2_mean"] == [(0, 3.0), (1, math.inf)]
    assert scalars["rank1/loss"] == [(1, 4.0)]
    assert sink.written == 3 and sink.dropped == 0


def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path):
    sink = TensorBoardSink(tmp_path, max_queue=1)
    # Holding the sink's (reentrant) lock keeps its writer thread from draining the queue.
    with sink._lock:
        for step in range(5):
            sink.write({"step": step, "rank": 0, "values": {"loss": float(step)}})
    sink.close()
    assert (sink.dropped, sink.written) == (4, 1)
    assert _scalars(tmp_path)["loss"] == [(4, 4.0)]  # the newest record survives


def test_fanout_mirrors_a_monitored_model(tmp_path):
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16))
    memory, board = MemorySink(), TensorBoardSink(tmp_path)
    with attach(model, sink=FanoutSink(memory, board)) as mon:
        for _ in range(3):
            x = torch.randint(0, 256, (2, 16))
            _, loss = model(x, x)
            loss.backward()
            mon.step(loss=loss)
    board.close()
    scalars = _scalars(tmp_path)
    for record in memory.records:
        for key, value in record["values"].items():
            assert (record["step"], pytest.approx(value, rel=1e-6)) in scalars[key]
    assert "layer.1.attn.logit_max" in scalars and [s for s, _ in scalars["loss"]] == [0, 1, 2]
