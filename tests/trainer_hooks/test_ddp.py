"""Hooks under DistributedDataParallel: two CPU processes (gloo), each with its own data.

Each rank attaches two monitors to the same model before wrapping it in DDP: one per-rank
(``reduce=False``) and one reducing (``reduce=True``). The reduced record, emitted by rank 0
alone, must equal the max of the ranks' maxima and the mean of their means and scalars.
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stabmon.net import free_port
from tests.trainer_hooks._teardown import exit_without_teardown
from tests.trainer_hooks.test_hooks_support import ListSink, loss_of, nano
from trainer_hooks.hooks import attach
from trainer_hooks.hooks.accumulate import MAX, kind_of

pytestmark = pytest.mark.integration

WORLD = 2
STEPS = 2


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = nano(seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        per_rank, reduced = ListSink(), ListSink()
        local = attach(model, sink=per_rank, optimizer=opt)
        red = attach(model, sink=reduced, optimizer=opt, reduce=True)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        for i in range(STEPS):
            g = torch.Generator().manual_seed(1000 * rank + i)  # different data on each rank
            loss = loss_of(ddp, torch.randint(0, 64, (2, 12), generator=g))
            loss.backward()
            opt.step()
            opt.zero_grad()
            local.step(loss=loss, rank_id=float(rank))
            red.step(loss=loss, rank_id=float(rank))
        local.remove()
        red.remove()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"local": per_rank.records, "reduced": reduced.records}, f)
        dist.barrier()  # both ranks done before the group goes
    finally:
        dist.destroy_process_group()
    exit_without_teardown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_per_rank_and_reduced_records(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [[rec["rank"] for rec in o["local"]] for o in out] == [[0] * STEPS, [1] * STEPS]
    assert out[1]["reduced"] == []  # rank 0 alone sends
    reduced = out[0]["reduced"]
    assert [r["step"] for r in reduced] == list(range(STEPS))
    for s in range(STEPS):
        ranks = [o["local"][s]["values"] for o in out]
        got = reduced[s]["values"]
        assert got.keys() == ranks[0].keys()
        assert ranks[0]["layer.0.fc1.l2_max"] != ranks[1]["layer.0.fc1.l2_max"]  # the data differ
        for key, value in got.items():
            vals = [r[key] for r in ranks]
            if "." in key and kind_of(key.rsplit(".", 1)[-1]) == MAX:
                expected = max(vals)
            else:  # means, loss, lr, grad_norm, extras: mean over ranks
                expected = sum(vals) / WORLD
            assert value == pytest.approx(expected, rel=1e-6), key
        assert got["rank_id"] == 0.5
        # DDP averaged the gradients: every rank saw the same norm.
        assert ranks[0]["grad_norm"] == pytest.approx(ranks[1]["grad_norm"], rel=1e-6)
        assert "layer.1.attn.logit_max" in got
