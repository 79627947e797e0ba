"""A real training job for the fault tests, run as ``python -m tests.faults._train_job``.

It trains the tiny preset with the library ``train()`` and a sink that fans out to a
:class:`JsonlSink` (the ground truth: every record the hooks emitted) and a :class:`Client`
streaming to the collector. The token comes from ``STABMON_TOKEN`` (never the command line).
A per-step pause stretches the run so the test can kill the collector mid-stream.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch

from trainer_hooks.client import Client, FanoutSink, JsonlSink, RunInfo
from trainer_hooks.lab.train import TrainConfig, train


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--jsonl", required=True)
    p.add_argument("--spool", required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pause", type=float, default=0.02)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    cfg = TrainConfig(variant="baseline", preset="tiny", steps=a.steps, eval_every=0, seed=0).resolved()
    client = Client(
        a.url,
        run=RunInfo(name="fault-train", id=a.run_id, config={"variant": "baseline"}),
        spool_dir=a.spool,
        flush_interval_s=0.1,
        max_batch_points=20,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
        flush_timeout_s=90.0,
    )
    sink = FanoutSink(JsonlSink(a.jsonl), client)
    result = train(cfg, sink=sink, callbacks=[lambda _info: time.sleep(a.pause)])
    print(json.dumps({"steps_run": result.steps_run, "stats": client.stats.__dict__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
