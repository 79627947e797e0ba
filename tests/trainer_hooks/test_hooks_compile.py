"""Hooks attached before ``torch.compile`` keep recording, with the same values as eager mode.

``aot_eager`` runs Dynamo and AOTAutograd (where hooks are traced into the graph and their list
appends are replayed as side effects) without Inductor's code generation, which keeps the test
within seconds on a CPU.
"""

import pytest
import torch

from tests.trainer_hooks.test_hooks_support import ListSink, loss_of, nano, stabmon_gpt
from trainer_hooks.hooks import attach


def _run(model, steps=3, every=1, compile_=False):
    sink = ListSink()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = attach(model, sink=sink, optimizer=opt, every=every)
    fwd = torch.compile(model, backend="aot_eager") if compile_ else model
    for i in range(steps):
        idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(i))
        loss = loss_of(fwd, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.step(loss=loss)
    return sink.records, mon, fwd


@pytest.mark.parametrize("make", [nano, stabmon_gpt], ids=["nanogpt", "stabmon"])
def test_compiled_model_records_the_same_values(make):
    torch._dynamo.reset()
    eager, _, _ = _run(make(), every=2)
    compiled, mon, fwd = _run(make(), every=2, compile_=True)
    assert [r["step"] for r in compiled] == [0, 2]
    assert eager[0]["values"].keys() == compiled[0]["values"].keys()
    assert any(k.endswith("logit_max") for k in compiled[0]["values"])
    for e, c in zip(eager, compiled, strict=True):
        for key, value in e["values"].items():
            assert c["values"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # Removing the monitor after compiling: the traced hook calls see it removed and do nothing.
    mon.remove()
    loss_of(fwd, torch.randint(0, 64, (2, 12))).backward()
    mon.step(loss=1.0)
    assert len(mon.sink.records) == 2
