"""Monitor behaviour: removal leaves the model as it was, every=N, training-only recording,
run-level values (loss, lr, grad_norm, extras) in either loop order, failure isolation, and
exactly one device-to-host transfer per emitted step (none on skipped steps)."""

import contextlib
import logging
import math

import pytest
import torch

from tests.trainer_hooks.test_hooks_support import (
    ListSink,
    all_hooks_empty,
    llama,
    loss_of,
    nano,
    stabmon_gpt,
)
from trainer_hooks.hooks import Monitor, attach


def _idx(seed=1, B=2, T=10):
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [stabmon_gpt, nano, llama], ids=["stabmon", "nanogpt", "llama"])
def test_remove_leaves_the_model_as_it_was(make):
    model = make()
    if make is stabmon_gpt:
        model.blocks[1].attn.record_attention = True  # a user's own setting must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attrs_before = {n: dict(vars(m)) for n, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = attach(model, sink=ListSink(), optimizer=opt)
    assert not all_hooks_empty(model)
    if make is stabmon_gpt:
        assert all(b.attn.record_attention for b in model.blocks)
    loss_of(model, _idx()).backward()
    mon.step()
    mon.remove()
    mon.remove()  # idempotent
    assert all_hooks_empty(model)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    if make is stabmon_gpt:
        assert [b.attn.record_attention for b in model.blocks] == [False, True]
    for n, m in model.named_modules():
        assert set(vars(m)) == set(attrs_before[n]), n
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_context_manager_removes_and_step_after_remove_is_a_no_op():
    model, sink = nano(), ListSink()
    with attach(model, sink=sink) as mon:
        assert isinstance(mon, Monitor)
        loss_of(model, _idx())
        mon.step(loss=2.0)
    assert all_hooks_empty(model)
    mon.step(loss=3.0)
    assert [r["values"]["loss"] for r in sink.records] == [2.0]


def test_every_n_skips_steps_and_numbers_them():
    model, sink = nano(), ListSink()
    mon = attach(model, sink=sink, every=3, start_step=100)
    calls = []
    add = mon._acc.add
    mon._acc.add = lambda ids, vals: (calls.append(mon.step_index), add(ids, vals))
    for i in range(7):
        loss_of(model, _idx(i))
        mon.step(loss=float(i))
    assert [r["step"] for r in sink.records] == [102, 105]
    assert [r["values"]["loss"] for r in sink.records] == [2.0, 5.0]
    assert set(calls) == {102, 105}  # hooks did no work on the other steps
    assert all(r["rank"] == 0 for r in sink.records)


def test_evaluation_forwards_are_not_recorded():
    model, sink = nano(), ListSink()
    mon = attach(model, sink=sink)
    loss_of(model, _idx(1))
    model.eval()
    with torch.no_grad():
        loss_of(model, _idx(2) * 0 + 7)  # different data: would change every statistic
    model.train()
    mon.step()
    ref_model, ref_sink = nano(), ListSink()
    ref = attach(ref_model, sink=ref_sink)
    loss_of(ref_model, _idx(1))
    ref.step()
    assert sink.records[0]["values"] == ref_sink.records[0]["values"]
    model.eval()
    loss_of(model, _idx(3))
    mon.step(loss=1.5)  # an evaluation-only step carries only the run-level values
    assert sink.records[1]["values"] == {"loss": 1.5}


def _train(model, mon, opt, steps, order):
    norms = []
    for i in range(steps):
        loss = loss_of(model, _idx(i))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        if order == "step_last":
            opt.step()
            opt.zero_grad(set_to_none=True)
            mon.step(loss=loss)
        else:
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return norms


@pytest.mark.parametrize("order", ["step_last", "step_before_optimizer"])
def test_lr_and_grad_norm_from_the_optimizer(order):
    model, sink = nano(), ListSink()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    mon = attach(model, sink=sink, optimizer=opt)
    norms = []
    for i in range(3):
        norms += _train(model, mon, opt, 1, order)
        if i < 2:
            sched.step()
    got = [r["values"]["grad_norm"] for r in sink.records]
    assert got == pytest.approx(norms, rel=1e-5)  # each step's own gradients, never the previous ones
    assert [r["values"]["lr"] for r in sink.records] == pytest.approx([3e-3, 1.5e-3, 1e-3])
    assert all("loss" in r["values"] for r in sink.records)


def test_explicit_values_and_extras():
    model, sink = nano(), ListSink()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = attach(model, sink=sink, optimizer=opt)
    loss = loss_of(model, _idx())
    loss.backward()
    mon.step(loss=loss, lr=0.25, grad_norm=torch.tensor(7.0), tokens_per_s=1234, val_loss=torch.tensor([2.5]))
    v = sink.records[0]["values"]
    assert v["loss"] == pytest.approx(loss.item())
    assert (v["lr"], v["grad_norm"], v["tokens_per_s"], v["val_loss"]) == (0.25, 7.0, 1234.0, 2.5)
    with pytest.raises(ValueError, match="one-element tensor"):
        mon.step(loss=torch.ones(3))
    with pytest.raises(ValueError, match="valid run-level series key"):
        mon.step(**{"layer.0.fc2.l2_mean": 1.0})
    with pytest.raises(ValueError, match="expected a number"):
        mon.step(loss="high")


def test_failing_sink_and_failing_hook_never_stop_training(caplog):
    class BadSink(ListSink):
        def write(self, record):
            raise OSError("disk full")

    model = nano()
    # A site whose module returns something the statistics cannot digest.
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, a, out: {"not": "a tensor"})
    sink = ListSink()
    with caplog.at_level(logging.WARNING, logger="trainer_hooks.hooks"):
        mon = attach(model, sink=sink, logits=False)
        bad = attach(model, sink=BadSink(), logits=False)
        for i in range(2):
            with contextlib.suppress(TypeError):  # the model itself chokes on the dict output
                loss_of(model, _idx(i))
            mon.step(loss=1.0)
            bad.step(loss=1.0)
    assert "disabling the hook on transformer.h.0.mlp.c_fc" in caplog.text
    assert "disk full" in caplog.text
    assert len(sink.records) == 2
    assert "layer.0.qkv.l2_mean" in sink.records[0]["values"]
    assert "layer.0.fc1.l2_mean" not in sink.records[1]["values"]


class _TransferCounter:
    """Counts every Python-level way of reading a tensor's values on the host."""

    NAMES = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self, monkeypatch):
        self.n = 0
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def counted(t, *a, _orig=orig, **k):
                self.n += 1
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)
        orig_to = torch.Tensor.to

        def to(t, *a, **k):
            target = a[0] if a else k.get("device")
            to_host = isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"
            if to_host and t.device.type != "cpu":  # a device -> host copy
                self.n += 1
            return orig_to(t, *a, **k)

        monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.mark.parametrize("make", [stabmon_gpt, nano, llama], ids=["stabmon", "nanogpt", "llama"])
def test_one_host_transfer_per_emitted_step(make, monkeypatch):
    def run(with_monitor):
        model = make()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        mon = attach(model, sink=ListSink(), optimizer=opt, every=2) if with_monitor else None
        counter = _TransferCounter(monkeypatch)
        per_step = []
        for i in range(4):
            before = counter.n
            loss = loss_of(model, _idx(i))
            loss.backward()
            opt.step()
            opt.zero_grad()
            if mon is not None:
                mon.step(loss=loss, tokens=torch.tensor(10.0))
            per_step.append(counter.n - before)
        monkeypatch.undo()
        return per_step, mon

    baseline, _ = run(False)
    monitored, mon = run(True)
    assert [m - b for m, b in zip(monitored, baseline, strict=True)] == [1, 0, 1, 0], (monitored, baseline)
    assert [r["step"] for r in mon.sink.records] == [0, 2]
    assert "grad_norm" in mon.sink.records[0]["values"]


def test_flush_hands_records_over_and_flushes_the_sink():
    model, sink = nano(), ListSink()
    mon = attach(model, sink=sink)
    loss_of(model, _idx())
    mon.step(loss=math.inf)
    mon.flush()
    assert sink.flushes == 1 and sink.records[0]["values"]["loss"] == math.inf
    assert not sink.closed  # the sink belongs to the caller


def test_explicit_attention_path_only_on_recorded_steps():
    model, sink = stabmon_gpt(), ListSink()
    model.blocks[1].attn.record_attention = True  # the user's choice: always explicit
    mon = attach(model, sink=sink, every=3)
    seen = []
    for i in range(4):
        seen.append([b.attn.record_attention for b in model.blocks])
        loss_of(model, _idx(i))
        mon.step()
    assert seen == [[True, True], [False, True], [False, True], [True, True]]
    assert [r["step"] for r in sink.records] == [0, 3]
    assert all("layer.0.attn.entropy_mean" in r["values"] for r in sink.records)
    mon.remove()
    assert [b.attn.record_attention for b in model.blocks] == [False, True]


@pytest.mark.integration
def test_package_exports_load_lazily():
    import subprocess
    import sys

    code = (
        "import sys, trainer_hooks\n"
        "assert 'torch' not in sys.modules, 'importing the package must stay cheap'\n"
        "from trainer_hooks import Client, MemorySink, Monitor, RunInfo, attach\n"
        "from trainer_hooks.hooks import attach as a2\n"
        "assert attach is a2 and 'torch' in sys.modules\n"
        "assert sorted(trainer_hooks.__all__) == ['Client', 'MemorySink', 'Monitor', 'RunInfo', 'attach']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
