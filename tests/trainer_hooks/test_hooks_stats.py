"""Every statistic a hook emits equals a direct computation on the same tensors.

Each test runs one training forward with a monitor attached and a :class:`Capture` of the same
modules' outputs, then recomputes the statistic the long way (float64, explicit loops/einsum):
output L2 norms for every site kind, the exact logit max (stabmon GPT, every variant; GPT-2;
nanoGPT) against an explicit q.k, the Llama logit bound against the true rotary logits, the
attention entropy, aggregation over gradient-accumulation forwards, and non-finite values.
"""

import math

import pytest
import torch

from tests.trainer_hooks.test_hooks_support import (
    Capture,
    ListSink,
    causal_abs_max,
    gpt2,
    llama,
    loss_of,
    nano,
    split_heads,
    stabmon_gpt,
    token_norms,
)
from trainer_hooks.hooks import attach
from trainer_hooks.lab.config import VARIANTS


def _one_step(model, names, batches, **kw):
    """Attach, capture ``names``, run forward+backward on each batch, close one step."""
    sink = ListSink()
    mon = attach(model, sink=sink, **kw)
    cap = Capture(model, names)
    for idx in batches:
        loss_of(model, idx).backward()
    mon.step(loss=1.0)
    mon.remove()
    cap.remove()
    assert len(sink.records) == 1
    return sink.records[0]["values"], cap.out, mon


def _idx(seed=1, B=3, T=12, vocab=64):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def _check_l2(values, outs, site_keys):
    for name, prefix in site_keys.items():
        n = token_norms(outs[name][0])
        assert values[f"{prefix}.l2_mean"] == pytest.approx(n.mean().item(), rel=1e-5)
        assert values[f"{prefix}.l2_max"] == pytest.approx(n.max().item(), rel=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stabmon_gpt_every_site_and_variant(variant):
    model = stabmon_gpt(variant)
    names = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    post = [f"blocks.{i}.attn.qkv_norm" for i in range(2)]  # (B, T, 3C) as the attention reads it
    values, outs, mon = _one_step(model, names + post, [_idx()], attn_rows=None)
    _check_l2(values, outs, {n: f"layer.{n.split('.')[1]}.{n.split('.')[-1]}" for n in names})
    for i in range(2):
        attn = model.blocks[i].attn
        q, k, v = outs[f"blocks.{i}.attn.qkv_norm"][0].split(attn.n_embd, dim=-1)
        with torch.no_grad():  # the variant's per-head q/k LayerNorms, in float64
            q = attn.q_norm.double()(split_heads(q, attn.n_head))
            k = attn.k_norm.double()(split_heads(k, attn.n_head))
            attn.float()
        scale = 1 / math.sqrt(attn.head_dim)
        assert values[f"layer.{i}.attn.logit_max"] == pytest.approx(causal_abs_max(q, k, scale), rel=1e-5)
        # Beside it, the bound max_h max|q_h| max|k_h| / sqrt(hs) over every token.
        qn, kn = q.norm(dim=-1).amax(dim=(0, 2)), k.norm(dim=-1).amax(dim=(0, 2))  # (nh,)
        assert values[f"layer.{i}.attn.logit_bound"] == pytest.approx(
            (qn * kn).max().item() * scale, rel=1e-5
        )
        # Entropy of the softmax the model takes: over the capped logits for capping variants.
        z = torch.einsum("bhid,bhjd->bhij", q, k) * scale
        T = z.shape[-1]
        if VARIANTS[variant].softmax_cap:
            z = model.config.softmax_cap * torch.tanh(z / model.config.softmax_cap)
        z = z.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
        p = torch.softmax(z, dim=-1)
        h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean().item()
        assert values[f"layer.{i}.attn.entropy_mean"] == pytest.approx(h, rel=1e-5)
    assert all(not b.attn.record_attention for b in model.blocks)  # restored by remove()


def test_stabmon_gpt_without_logits_keeps_sdpa():
    model = stabmon_gpt()
    sink = ListSink()
    with attach(model, sink=sink, logits=False):
        assert not model.blocks[0].attn.record_attention
        loss_of(model, _idx()).backward()
    assert not sink.records  # no step() call: nothing emitted
    mon = attach(model, sink=sink, logits=False)
    loss_of(model, _idx()).backward()
    mon.step()
    assert not any(".attn." in k for k in sink.records[0]["values"])
    assert "layer.1.qkv.l2_max" in sink.records[0]["values"]


@pytest.mark.parametrize("opts", [{"attn_rows": None}, {}], ids=["exact", "default"])
@pytest.mark.parametrize("make", [nano, gpt2], ids=["nanogpt", "hf_gpt2"])
def test_fused_qkv_exact_logit_max(make, opts):
    """Exact with ``attn_rows=None``, and so by default: sampled rows moved alerts (see
    docs/benchmarks.md), so they stay opt-in."""
    model = make()
    qkv = [f"transformer.h.{i}.attn.c_attn" for i in range(2)]
    other = [f"transformer.h.{i}.{n}" for i in range(2) for n in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    values, outs, _ = _one_step(model, qkv + other, [_idx()], **opts)
    keys = {}
    for n in qkv + other:
        i = int(n.split(".")[2])
        site = {"attn.c_attn": "qkv", "attn.c_proj": "proj", "mlp.c_fc": "fc1", "mlp.c_proj": "fc2"}
        keys[n] = f"layer.{i}.{site[n.split('.', 3)[3]]}"
    _check_l2(values, outs, keys)
    n_head = 4
    for i, name in enumerate(qkv):
        q, k, _ = outs[name][0].chunk(3, dim=-1)
        q, k = split_heads(q, n_head), split_heads(k, n_head)
        expected = causal_abs_max(q, k, 1 / math.sqrt(q.shape[-1]))
        assert values[f"layer.{i}.attn.logit_max"] == pytest.approx(expected, rel=1e-5)


def test_llama_every_site_and_logit_bound():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    model = llama()
    sites = {
        "self_attn.q_proj": "q",
        "self_attn.k_proj": "k",
        "self_attn.v_proj": "v",
        "self_attn.o_proj": "proj",
        "mlp.up_proj": "fc1",
        "mlp.gate_proj": "gate",
        "mlp.down_proj": "fc2",
    }
    names = {f"model.layers.{i}.{n}": f"layer.{i}.{s}" for i in range(2) for n, s in sites.items()}
    idx = _idx()
    values, outs, _ = _one_step(model, list(names), [idx])
    _check_l2(values, outs, names)
    hd, nh, nkv = 16, 4, 2
    B, T = idx.shape
    for i in range(2):
        q = split_heads(outs[f"model.layers.{i}.self_attn.q_proj"][0], nh)  # (B, 4, T, 16)
        k = split_heads(outs[f"model.layers.{i}.self_attn.k_proj"][0], nkv)  # (B, 2, T, 16)
        bound = (q.norm(dim=-1).amax(dim=(0, 2)) * k.norm(dim=-1).amax(dim=(0, 2)).repeat_interleave(2)).max()
        assert values[f"layer.{i}.attn.logit_bound"] == pytest.approx(bound.item() / math.sqrt(hd), rel=1e-5)
        # The true logits: rotary embedding applied, key heads repeated for GQA.
        pos = torch.arange(T).unsqueeze(0)
        cos, sin = model.model.rotary_emb(q.float(), pos)
        qr, kr = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
        true_max = causal_abs_max(qr, repeat_kv(kr, nh // nkv), 1 / math.sqrt(hd))
        assert values[f"layer.{i}.attn.logit_bound"] >= true_max * (1 - 1e-6)
        assert f"layer.{i}.attn.logit_max" not in values


def test_gradient_accumulation_aggregates_forwards():
    model = nano()
    names = ["transformer.h.0.mlp.c_proj", "transformer.h.1.attn.c_attn"]
    values, outs, _ = _one_step(model, names, [_idx(1), _idx(2, B=2, T=9), _idx(3)], attn_rows=None)
    for name, key in zip(names, ["layer.0.fc2", "layer.1.qkv"], strict=True):
        norms = [token_norms(o) for o in outs[name]]
        assert len(norms) == 3
        mean_of_means = sum(n.mean().item() for n in norms) / 3
        assert values[f"{key}.l2_mean"] == pytest.approx(mean_of_means, rel=1e-5)
        assert values[f"{key}.l2_max"] == pytest.approx(max(n.max().item() for n in norms), rel=1e-5)
    per_forward = []
    for o in outs["transformer.h.1.attn.c_attn"]:
        q, k, _ = o.chunk(3, dim=-1)
        per_forward.append(causal_abs_max(split_heads(q, 4), split_heads(k, 4), 1 / math.sqrt(8)))
    assert values["layer.1.attn.logit_max"] == pytest.approx(max(per_forward), rel=1e-5)


def test_non_finite_outputs_are_recorded_not_dropped():
    model = nano()
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = math.inf
        model.transformer.h[0].mlp.c_proj.bias[0] = math.nan
    sink = ListSink()
    mon = attach(model, sink=sink)
    loss_of(model, _idx())
    mon.step(loss=torch.tensor(math.nan))
    v = sink.records[0]["values"]
    assert math.isnan(v["layer.0.fc2.l2_mean"]) and math.isnan(v["layer.0.fc2.l2_max"])
    assert math.isnan(v["loss"])
    assert math.isfinite(v["layer.0.qkv.l2_max"])
    assert not math.isfinite(v["layer.1.fc1.l2_max"])


def test_probe_statistics_edge_cases():
    from trainer_hooks.hooks.stats import entropy_mean, probe_logit_max

    z = torch.tensor([[[[0.5, -math.inf, -math.inf], [-3.0, 2.0, -math.inf], [1.0, -0.5, 0.25]]]])
    assert probe_logit_max(z).item() == 3.0  # a large negative logit counts; masked -inf does not
    assert math.isnan(probe_logit_max(torch.where(z == 2.0, math.nan, z)).item())
    assert probe_logit_max(torch.where(z == 2.0, math.inf, z)).item() == math.inf
    p = torch.softmax(z, dim=-1)
    expected = torch.special.entr(p.double()).sum(-1).mean().item()
    assert entropy_mean(p).item() == pytest.approx(expected, rel=1e-6)
    assert entropy_mean(torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])).item() == pytest.approx(math.log(2) / 2)
    assert math.isnan(entropy_mean(torch.where(p == p.max(), math.nan, p)).item())


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
@pytest.mark.parametrize("capped", [False, True])
def test_entropy_from_logits_equals_the_direct_formula(scale, capped):
    from trainer_hooks.hooks.stats import entropy_from_logits, probe_logit_rows
    from trainer_hooks.lab.attention import SoftCap

    T = 24
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    z = (torch.randn(2, 3, T, T, generator=torch.Generator().manual_seed(0)) * scale).masked_fill(
        future, -math.inf
    )
    cap = SoftCap(50.0) if capped else None
    p = torch.softmax(z if cap is None else cap(z).masked_fill(future, -math.inf), dim=-1)
    logit_max, z0, row_max = probe_logit_rows(z)
    assert logit_max.item() == pytest.approx(z[~future.expand_as(z)].abs().max().item())
    expected = torch.special.entr(p.double()).sum(-1).mean().item()
    assert entropy_from_logits(p, z0, row_max, cap).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
