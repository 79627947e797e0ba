"""Hooks under FSDP2 (``fully_shard``): two CPU processes (gloo) against the unsharded model.

Each rank shards the same model (every block, then the root: DTensor parameters, gradients and
AdamW state), attaches a reducing monitor and a per-rank one (through `MonitoredRun`, whose stop
handshake the callbacks use; it is handed ``clip_grad_norm_``'s DTensor norm), and trains on its
half of a batch. A single process trains the same model
unsharded on the whole batch: the gradient, parameter and update statistics of both FSDP2
records must equal its own (FSDP2 averages gradients over ranks as the mean loss over the whole
batch does). Rank 0's sink raises a critical alert at ``ALERT_AT``; both ranks must stop there.
docs/integrations.md copies the sharding and ``attach`` lines (``tests/integrations/test_docs.py``).
"""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard

from stabmon.net import free_port
from tests.integrations._tiny import critical_alert
from tests.trainer_hooks._teardown import exit_without_teardown
from tests.trainer_hooks.test_hooks_support import ListSink, loss_of, nano
from trainer_hooks.hooks import attach
from trainer_hooks.hooks.accumulate import MAX, kind_of
from trainer_hooks.integrations.run import MonitoredRun

pytestmark = pytest.mark.integration

WORLD = 2
STEPS = 5
ALERT_AT = 2
PARAM_STATS = ("grad_norm", "param_norm", "update_rms", "update_ratio")


def _batch(step: int) -> torch.Tensor:
    return torch.randint(0, 64, (2 * WORLD, 12), generator=torch.Generator().manual_seed(step))


class AlertingSink(ListSink):
    """Delivers a critical alert when it receives the record of ``ALERT_AT`` (as the client would)."""

    on_alert = None

    def write(self, record: dict) -> None:
        super().write(record)
        if record["step"] == ALERT_AT and self.on_alert is not None:
            self.on_alert(critical_alert(record["step"]))


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        sink, per_rank = AlertingSink(), ListSink()
        model = nano(seed=0)
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)  # FSDP2: DTensor parameters; attach after sharding
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        mon = attach(model, sink=sink, optimizer=opt, reduce=True, update_stats=True)
        options = {"optimizer": opt, "update_stats": True, "reduce": False}
        run = MonitoredRun(sink=per_rank, on_alert="stop", attach_options=options)
        local = run.start(model, name="fsdp2", config={}, start_step=0)
        sink.on_alert = run.alerts if rank == 0 else None  # rank 0 alone hears alerts
        stopped = None
        for step in range(STEPS):
            idx = _batch(step)[2 * rank : 2 * rank + 2]  # this rank's half of the batch
            loss = loss_of(model, idx)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)  # a DTensor
            opt.step()
            opt.zero_grad()
            mon.step(loss=loss)
            local.step(loss=loss, grad_norm=norm)
            if run.stop_agreed(step):
                stopped = step
                break
        mon.remove()
        run.finish()
        out = {"reduced": sink.records, "local": per_rank.records, "stopped": stopped}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        dist.barrier()  # FSDP2's last collectives done on both ranks
    finally:
        dist.destroy_process_group()
    exit_without_teardown()


def _unsharded(steps: int) -> list[dict]:
    model = nano(seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sink = ListSink()
    with attach(model, sink=sink, optimizer=opt, update_stats=True) as mon:
        for step in range(steps):
            loss = loss_of(model, _batch(step))
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss=loss)
    return [r["values"] for r in sink.records]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_fsdp2_statistics_equal_the_unsharded_model_and_both_ranks_stop_together(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [o["stopped"] for o in out] == [ALERT_AT, ALERT_AT]  # the same step on both ranks
    assert out[1]["reduced"] == []  # rank 0 alone sends the reduced record
    reduced = [r["values"] for r in out[0]["reduced"]]
    ref = _unsharded(ALERT_AT + 1)
    assert len(reduced) == len(ref) == ALERT_AT + 1
    for s, want in enumerate(ref):
        ranks = [o["local"][s]["values"] for o in out]
        checked = 0
        for key, value in want.items():
            if key == "loss":  # the mean over ranks of their halves' mean losses
                assert reduced[s][key] == pytest.approx(value, rel=1e-5)
            elif key.rsplit(".", 1)[-1] in PARAM_STATS or key in ("grad_norm", "lr"):
                for got in (reduced[s], *ranks):  # reduced, and each rank's own record
                    assert got[key] == pytest.approx(value, rel=2e-4, abs=1e-6), (s, key)
                checked += 1
        assert reduced[s].keys() == want.keys()
        assert checked > 20
        assert not any(k.endswith("_den") for k in reduced[s])  # hidden denominators
        # Activations are not sharded: output statistics keep DDP's semantics (max of maxima,
        # mean of means over the ranks' own batches).
        assert ranks[0]["layer.0.qkv.l2_max"] != ranks[1]["layer.0.qkv.l2_max"]
        for key in ("layer.0.qkv.l2_max", "layer.1.fc1.l2_mean", "layer.1.attn.logit_max"):
            vals = [r[key] for r in ranks]
            expected = max(vals) if kind_of(key.rsplit(".", 1)[-1]) == MAX else sum(vals) / WORLD
            assert reduced[s][key] == pytest.approx(expected, rel=1e-6), key


def _hsdp_worker(rank: int, port: int, out_dir: str) -> None:
    """HSDP on a (replicate=2, shard=1) mesh: every element on both ranks, counted once."""
    from torch.distributed.device_mesh import init_device_mesh

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))
        model = nano(seed=0)
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        sink, per_rank = ListSink(), ListSink()
        mon = attach(model, sink=sink, optimizer=opt, reduce=True, update_stats=True)
        local = attach(model, sink=per_rank, optimizer=opt, update_stats=True)
        for step in range(2):
            loss = loss_of(model, _batch(step)[2 * rank : 2 * rank + 2])
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.step(loss=loss)
            local.step(loss=loss)
        mon.remove()
        local.remove()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"reduced": sink.records, "local": per_rank.records}, f)
        dist.barrier()  # FSDP2's last collectives done on both ranks
    finally:
        dist.destroy_process_group()
    exit_without_teardown()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_hsdp_replicas_are_counted_once(tmp_path):
    mp.spawn(_hsdp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    got = [out[0]["reduced"], out[0]["local"], out[1]["local"]]
    for s, want in enumerate(_unsharded(2)):
        keys = [k for k in want if k.rsplit(".", 1)[-1] in PARAM_STATS]
        assert len(keys) > 20
        for records in got:
            for key in keys:
                assert records[s]["values"][key] == pytest.approx(want[key], rel=2e-4, abs=1e-6), (s, key)
