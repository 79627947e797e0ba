"""The training-side signals beyond output norms, each against a direct torch computation:
per-site gradient and parameter norms, Adam's update RMS and update ratio (after the optimizer
step), sampled attention rows (stabmon's GPT and fused q|k|v), per-head entropy minimum,
residual-stream max-abs and the LM head's log-partition; and no graph breaks under torch.compile."""

import math

import pytest
import torch

from tests.trainer_hooks.test_hooks_support import ListSink, gpt2, llama, loss_of, nano, stabmon_gpt
from trainer_hooks.hooks import attach
from trainer_hooks.hooks.stats import probe_index, strided_positions

FAMILIES = [stabmon_gpt, nano, gpt2, llama]
IDS = ["stabmon", "nanogpt", "hf_gpt2", "llama"]


def _idx(seed=1, B=3, T=12):
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("opt_cls", [torch.optim.AdamW, torch.optim.Adam])
@pytest.mark.parametrize("make", FAMILIES, ids=IDS)
def test_parameter_and_update_statistics_match_a_direct_computation(make, opt_cls):
    model = make()
    opt = opt_cls(model.parameters(), lr=1e-2, weight_decay=0.1)
    sink = ListSink()
    mon = attach(model, sink=sink, optimizer=opt, update_stats=True)
    plan_sites = {ref: name for name, ref in mon._site_names.items()}
    modules = dict(model.named_modules())
    for i in range(3):
        loss_of(model, _idx(i)).backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
        opt.zero_grad(set_to_none=True)  # the statistics were taken at opt.step()
        mon.step(loss=1.0)
    values = sink.records[-1]["values"]
    names = {p: n for n, p in model.named_parameters()}
    checked = 0
    for ref, mod_name in plan_sites.items():
        prefix = f"layer.{ref.layer}.{ref.site}" if ref.layer >= 0 else ref.site
        if f"{prefix}.param_norm" not in values:
            continue
        params = [p for p in modules[mod_name].parameters(recurse=False)]
        pn = [names[p] for p in params]
        norm = lambda ts: math.sqrt(sum(t.double().square().sum().item() for t in ts))  # noqa: E731
        assert values[f"{prefix}.param_norm"] == pytest.approx(norm([p.detach() for p in params]), rel=1e-5)
        assert values[f"{prefix}.grad_norm"] == pytest.approx(norm([grads[n] for n in pn]), rel=1e-5)
        delta = [p.detach() - before[n] for p, n in zip(params, pn, strict=True)]
        assert values[f"{prefix}.update_ratio"] == pytest.approx(
            norm(delta) / norm([p.detach() for p in params]), rel=1e-3
        )
        # rms(g / (sqrt(v_hat) + eps)) with the state the step used
        g = opt.param_groups[0]
        num, count = 0.0, 0
        for p, n in zip(params, pn, strict=True):
            st = opt.state[p]
            v_hat = st["exp_avg_sq"].double() / (1 - g["betas"][1] ** float(st["step"]))
            num += (grads[n].double() / (v_hat.sqrt() + g["eps"])).square().sum().item()
            count += p.numel()
        assert values[f"{prefix}.update_rms"] == pytest.approx(math.sqrt(num / count), rel=1e-4)
        checked += 1
    assert checked >= 8
    assert any(k.endswith("attn_norm.param_norm") or k.endswith("mlp_norm.param_norm") for k in values)
    assert "final_norm.param_norm" in values


def test_update_statistics_are_opt_in_and_skipped_for_other_optimizers():
    model = nano()
    for opt, update_stats, expect in [
        (torch.optim.AdamW(model.parameters(), lr=1e-3), False, False),
        (torch.optim.SGD(model.parameters(), lr=1e-3), True, False),
    ]:
        sink = ListSink()
        mon = attach(model, sink=sink, optimizer=opt, update_stats=update_stats)
        loss_of(model, _idx()).backward()
        opt.step()
        mon.step()
        mon.remove()
        values = sink.records[0]["values"]
        assert "layer.0.fc1.grad_norm" in values and "layer.0.fc1.param_norm" in values
        assert any(k.endswith("update_rms") for k in values) is expect


def test_optimizer_given_to_step_is_watched_from_then_on():
    model = nano()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sink = ListSink()
    mon = attach(model, sink=sink, update_stats=True)
    for i in range(2):
        loss_of(model, _idx(i)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # gradients gone before step(): only the hook sees them
        mon.step(optimizer=opt)
    first, second = (r["values"] for r in sink.records)
    assert "layer.0.fc1.param_norm" in first and "layer.0.fc1.grad_norm" not in first
    assert "layer.0.fc1.grad_norm" in second and "layer.0.fc1.update_rms" in second


@pytest.mark.parametrize("make", [nano, gpt2], ids=["nanogpt", "hf_gpt2"])
def test_fused_qkv_sampled_rows_match_a_direct_computation(make):
    model = make()
    sink = ListSink()
    mon = attach(model, sink=sink, attn_rows=16)
    outs = {}
    h = model.transformer.h[1].attn.c_attn.register_forward_hook(lambda m, i, o: outs.__setitem__("qkv", o))
    idx = _idx(B=3, T=12)
    for step in range(3):
        loss_of(model, idx).backward()
        mon.step()
        b, rows = probe_index(torch.tensor(step), 3, 12, 16)
        q, k, _ = outs["qkv"].detach().double()[b.item()].chunk(3, dim=-1)  # (T, d)
        q, k = (t.view(12, 4, -1).transpose(0, 1) for t in (q, k))  # (nh, T, hs)
        z = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (nh, T, T)
        z = z[:, rows].masked_fill(torch.arange(12) > rows[:, None], -math.inf)  # (nh, S, T)
        p = torch.softmax(z, dim=-1)
        ent = -(p * p.clamp_min(1e-300).log()).sum(-1).mean(-1)  # (nh,)
        v = sink.records[-1]["values"]
        assert v["layer.1.attn.logit_max"] == pytest.approx(z[z > -math.inf].abs().max().item(), rel=1e-5)
        assert v["layer.1.attn.entropy_mean"] == pytest.approx(ent.mean().item(), rel=1e-5)
        assert v["layer.1.attn.entropy_min_head"] == pytest.approx(ent.min().item(), rel=1e-5)
    h.remove()


@pytest.mark.parametrize("make", FAMILIES, ids=IDS)
def test_residual_and_lm_head_statistics_match_a_direct_computation(make):
    model = make()
    sink = ListSink()
    mon = attach(model, sink=sink)
    outs = {}
    hooks = []
    for name, ref in mon.sites.items():
        if ref.site in ("resid", "lm_head"):
            key = "lm_head" if ref.site == "lm_head" else f"layer.{ref.layer}.resid"
            m = dict(model.named_modules())[name]
            hooks.append(m.register_forward_hook(lambda m, i, o, key=key: outs.__setitem__(key, o)))
    assert "lm_head" in {r.site for r in mon.sites.values()}
    idx = _idx()
    loss_of(model, idx).backward()
    mon.step()
    v = sink.records[0]["values"]
    for key, out in outs.items():
        x = (out[0] if isinstance(out, tuple) else out).detach().double()
        if key == "lm_head":
            pos = strided_positions(torch.tensor(0), x.numel() // x.shape[-1], 64)
            z = x.reshape(-1, x.shape[-1])[pos]
            lse = torch.logsumexp(z, dim=-1)
            assert v["lm_head.logit_max_abs"] == pytest.approx(z.abs().max().item(), rel=1e-5)
            assert v["lm_head.logz_mean"] == pytest.approx(lse.mean().item(), rel=1e-5)
            assert v["lm_head.logz_max"] == pytest.approx(lse.max().item(), rel=1e-5)
        else:
            assert v[f"{key}.max_abs"] == pytest.approx(x.abs().max().item(), rel=1e-6)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("make", [stabmon_gpt, nano, llama], ids=["stabmon", "nanogpt", "llama"])
def test_no_graph_breaks_from_the_hooks_on_recorded_or_skipped_steps(make):
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = attach(model, sink=ListSink(), optimizer=opt, every=2, update_stats=True)
    counts = []
    for step in range(3):  # recorded, skipped, recorded
        torch._dynamo.reset()
        explained = torch._dynamo.explain(lambda i: loss_of(model, i))(_idx(step))
        counts.append(explained.graph_break_count)
        mon.step(loss=1.0)
    mon.remove()
    assert counts == [0, 0, 0], [str(r.reason) for r in explained.break_reasons]
