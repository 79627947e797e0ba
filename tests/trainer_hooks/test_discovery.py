"""Site discovery: the built-in rules on stabmon's GPT (all variants), nanoGPT, Hugging Face
GPT-2 and Llama; wrapper prefixes; the explicit ``sites=`` mapping; and clear errors."""

import re

import pytest
import torch
from torch import nn

from tests.trainer_hooks.test_hooks_support import gpt2, llama, nano, stabmon_gpt
from trainer_hooks.hooks import SiteRef, attach, build_plan, discover_sites
from trainer_hooks.lab.config import VARIANTS


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stabmon_gpt_all_variants(variant):
    family, found = discover_sites(stabmon_gpt(variant))
    assert family == "stabmon"
    expected = {}
    for i in range(2):
        for name, site in [
            ("attn.qkv", "qkv"),
            ("attn.proj", "proj"),
            ("mlp.fc1", "fc1"),
            ("mlp.fc2", "fc2"),
            ("attn.logit_probe", "logit_probe"),
            ("attn.prob_probe", "prob_probe"),
            ("attn.qk_probe", "qk_probe"),
            ("ln_2", "mlp_norm"),
        ]:
            expected[f"blocks.{i}.{name}"] = SiteRef(i, site)
        expected[f"blocks.{i}"] = SiteRef(i, "resid")
        spec = VARIANTS[variant]
        # A variant's norms are parameter-only sites where it has them (Identity elsewhere).
        for name, site, on in [
            ("ln_1", "attn_norm", spec.pre_attn_ln),
            ("attn.qkv_norm", "qkv_norm", spec.qkv_norm),
            ("attn.q_norm", "q_norm", spec.qk_norm),
            ("attn.k_norm", "k_norm", spec.qk_norm),
            ("attn.proj_norm", "proj_norm", spec.out_norm),
            ("mlp.fc2_norm", "fc2_norm", spec.out_norm),
        ]:
            if on:
                expected[f"blocks.{i}.{name}"] = SiteRef(i, site)
    expected["ln_f"] = SiteRef(-1, "final_norm")
    expected["lm_head"] = SiteRef(-1, "lm_head")
    assert found == expected


def test_nanogpt():
    family, found = discover_sites(nano(n_layer=3))
    assert family == "gpt2"
    assert found["transformer.h.2.attn.c_attn"] == SiteRef(2, "qkv")
    assert found["transformer.h.0.attn.c_proj"] == SiteRef(0, "proj")
    assert found["transformer.h.1.mlp.c_fc"] == SiteRef(1, "fc1")
    assert found["transformer.h.1.mlp.c_proj"] == SiteRef(1, "fc2")
    assert found["transformer.h.1"] == SiteRef(1, "resid")
    assert found["transformer.h.1.ln_1"] == SiteRef(1, "attn_norm")
    assert found["transformer.ln_f"] == SiteRef(-1, "final_norm")
    assert found["lm_head"] == SiteRef(-1, "lm_head")
    assert len(found) == 3 * 7 + 2


def test_hf_gpt2_conv1d():
    model = gpt2()
    family, found = discover_sites(model)
    assert family == "gpt2"
    assert found == {
        f"transformer.h.{i}.{n}": SiteRef(i, s)
        for i in range(2)
        for n, s in [
            ("attn.c_attn", "qkv"),
            ("attn.c_proj", "proj"),
            ("mlp.c_fc", "fc1"),
            ("mlp.c_proj", "fc2"),
            ("ln_1", "attn_norm"),
            ("ln_2", "mlp_norm"),
        ]
    } | {f"transformer.h.{i}": SiteRef(i, "resid") for i in range(2)} | {
        "transformer.ln_f": SiteRef(-1, "final_norm"),
        "lm_head": SiteRef(-1, "lm_head"),
    }
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    plan = build_plan(model)
    fused = [sp for sp in plan.sites if sp.attn == "fused"]
    assert [sp.n_head for sp in fused] == [4, 4]  # from GPT2Attention.num_heads


def test_llama_mapping():
    family, found = discover_sites(llama())
    assert family == "llama"
    layer0 = {n.split("layers.0")[1]: ref.site for n, ref in found.items() if ".layers.0" in n}
    assert found["model.norm"] == SiteRef(-1, "final_norm") and found["lm_head"] == SiteRef(-1, "lm_head")
    layer0 = {k.lstrip("."): v for k, v in layer0.items()}
    assert layer0 == {
        "": "resid",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "mlp_norm",
        "self_attn.q_proj": "q",
        "self_attn.k_proj": "k",
        "self_attn.v_proj": "v",
        "self_attn.o_proj": "proj",
        "mlp.up_proj": "fc1",
        "mlp.gate_proj": "gate",
        "mlp.down_proj": "fc2",
    }
    plan = build_plan(llama())
    qk = {sp.ref.site: sp for sp in plan.sites if sp.ref.layer == 1 and sp.attn}
    assert set(qk) == {"q", "k"} and qk["q"].head_dim == 16 and qk["q"].scale == pytest.approx(0.25)


def test_wrapper_prefixes_still_match():
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    family, found = discover_sites(Wrapper(nano()))
    assert family == "gpt2"
    assert found["module.transformer.h.1.attn.c_attn"] == SiteRef(1, "qkv")


class Custom(nn.Module):
    """Names no built-in rule knows (Meta's original Llama code)."""

    def __init__(self, n_layer: int = 2, d: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(n_layer):
            block = nn.Module()
            block.attention = nn.Module()
            block.attention.wqkv = nn.Linear(d, 3 * d)
            block.attention.wo = nn.Linear(d, d)
            block.feed_forward = nn.Module()
            block.feed_forward.w1 = nn.Linear(d, 4 * d)
            block.feed_forward.w2 = nn.Linear(4 * d, d)
            self.layers.append(block)


MAPPING = {
    r"layers\.(?P<layer>\d+)\.attention\.wqkv$": "qkv",
    r"layers\.(\d+)\.attention\.wo$": "proj",  # no named group: first integer in the name
    r"feed_forward\.w1$": "fc1",
    r"feed_forward\.w2$": "fc2",
}


def test_explicit_mapping():
    family, found = discover_sites(Custom(), MAPPING)
    assert family == "custom"
    assert found["layers.1.attention.wqkv"] == SiteRef(1, "qkv")
    assert found["layers.0.attention.wo"] == SiteRef(0, "proj")
    assert found["layers.1.feed_forward.w2"] == SiteRef(1, "fc2")
    assert len(found) == 8


def test_explicit_mapping_overrides_builtin_rules():
    family, found = discover_sites(nano(), {r"h\.(\d+)\.mlp\.c_fc$": "fc1"})
    assert family == "custom" and set(found.values()) == {SiteRef(0, "fc1"), SiteRef(1, "fc1")}


def test_unknown_architecture_says_how_to_map_it():
    with pytest.raises(ValueError) as e:
        discover_sites(Custom())
    msg = str(e.value)
    assert "attach(model, sites={" in msg and '"qkv"' in msg and "first integer" in msg
    assert "layers.0.attention.wqkv" in msg  # shows the model's own module names
    with pytest.raises(ValueError, match="sites="):
        attach(Custom())


@pytest.mark.parametrize(
    ("sites", "match"),
    [
        ({r"wqkv$": "qkvv"}, "unknown site 'qkvv'"),
        ({r"layers\.(\d+": "qkv"}, "invalid regular expression"),
        ({}, "maps nothing"),
        ({r"nothing_here$": "qkv"}, "no module name matches"),
        ({r"attention\.w": "qkv"}, "both map to layer 0 site 'qkv'"),
    ],
)
def test_bad_mappings_get_clear_errors(sites, match):
    with pytest.raises(ValueError, match=re.escape(match) if "(" not in match else match):
        discover_sites(Custom(), sites)


def test_name_without_layer_index_is_an_error():
    model = nn.Module()
    model.proj = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="no layer index"):
        discover_sites(model, {r"^proj$": "proj"})


def test_fused_qkv_needs_head_count_for_logits():
    with pytest.raises(ValueError, match="n_head"):
        attach(Custom(), sites=MAPPING)
    with attach(Custom(), sites=MAPPING, logits=False) as mon:
        assert "layer.0.attn.logit_max" not in mon.keys
    with attach(Custom(), sites=MAPPING, n_head=4) as mon:
        assert "layer.1.attn.logit_max" in mon.keys
    with pytest.raises(ValueError, match="not 3 x a multiple of n_head=5"):
        attach(Custom(), sites=MAPPING, n_head=5)


def test_attach_validates_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        attach(object())
    with pytest.raises(ValueError, match="every"):
        attach(nano(), every=0)
    with pytest.raises(TypeError, match="lacks write"):
        attach(nano(), sink=object())
    with pytest.raises(TypeError, match="optimizer"):
        attach(nano(), optimizer=torch.zeros(1))


def test_no_logit_bound_where_q_and_k_are_normalised_after_the_projection():
    model = llama()
    with attach(model) as mon:
        assert "layer.0.attn.logit_bound" in mon.keys
    for layer in model.model.layers:  # as in Qwen3: per-head RMSNorm on q and k before RoPE
        layer.self_attn.q_norm = nn.LayerNorm(16)
        layer.self_attn.k_norm = nn.LayerNorm(16)
    with attach(model) as mon:
        assert not any("logit_bound" in k for k in mon.keys)
        assert "layer.0.q.l2_mean" in mon.keys
