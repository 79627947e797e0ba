"""On CUDA, the hooks and ``monitor.step()`` never synchronise the host with the device.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising call (``.item()``, a
blocking device-to-host copy, ...) into an error, so the forward pass (where the hooks run) and
``monitor.step()`` run under it. The records arrive later, once the non-blocking copies into
pinned memory have completed (at a later ``step()`` or ``flush()``). Skipped without a GPU.
"""

import pytest
import torch

from tests.trainer_hooks.test_hooks_support import ListSink, loss_of, stabmon_gpt
from trainer_hooks.hooks import attach

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("every", [1, 3])
def test_no_host_sync_in_hooks_or_step(every):
    model = stabmon_gpt().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sink = ListSink()
    mon = attach(model, sink=sink, optimizer=opt, every=every)
    steps = 7
    for i in range(steps):
        idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(i)).cuda()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = loss_of(model, idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        loss.backward()
        opt.step()
        opt.zero_grad()
        torch.cuda.set_sync_debug_mode("error")
        try:
            mon.step(loss=loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    mon.flush()
    assert [r["step"] for r in sink.records] == list(range(0, steps, every))
    values = sink.records[-1]["values"]
    assert {"loss", "grad_norm", "lr", "layer.1.attn.logit_max", "layer.0.fc2.l2_max"} <= values.keys()
    assert all(isinstance(v, float) for v in values.values())
