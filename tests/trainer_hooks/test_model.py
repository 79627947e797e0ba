"""The GPT: each variant's module tree is what the paper describes, the hook contract's module
names exist, shapes and gradients are right, init is GPT-2 style, and a short run learns."""

import math

import pytest
import torch
from torch import nn

from trainer_hooks.lab.attention import AttentionProbe, SoftCap
from trainer_hooks.lab.config import PRESETS, VARIANTS, GPTConfig, preset, preset_defaults
from trainer_hooks.lab.model import GPT


def _is_ln(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm)


# variant -> (ln_1 is LN, qkv_norm is LN, q/k norms are LN, proj/fc2 norms are LN, caps)
EXPECTED = {
    "baseline": (True, False, False, False, False),
    "qk_norm": (True, False, True, False, False),
    "qk_fc_norm": (True, False, True, True, False),
    "qkv_norm": (False, True, False, False, False),
    "qk_norm_cap": (True, False, True, False, True),
    "soft_cap": (True, False, False, False, True),
}


def test_every_variant_has_an_expectation():
    assert set(EXPECTED) == set(VARIANTS)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_structure_per_variant(variant):
    model = GPT(preset("tiny", variant=variant))
    pre_ln, qkv_ln, qk_ln, out_ln, caps = EXPECTED[variant]
    for block in model.blocks:
        a = block.attn
        assert _is_ln(block.ln_1) == pre_ln
        assert isinstance(block.ln_1, nn.LayerNorm if pre_ln else nn.Identity)
        assert _is_ln(block.ln_2)  # the pre-MLP norm stays in every variant
        assert _is_ln(a.qkv_norm) == qkv_ln
        if qkv_ln:
            assert a.qkv_norm.normalized_shape == (3 * model.config.n_embd,)
        assert _is_ln(a.q_norm) == _is_ln(a.k_norm) == qk_ln
        if qk_ln:
            assert a.q_norm.normalized_shape == (model.config.head_dim,)
        assert _is_ln(a.proj_norm) == _is_ln(block.mlp.fc2_norm) == out_ln
        assert isinstance(a.logit_cap, SoftCap if caps else nn.Identity)
        if caps:
            assert a.logit_cap.cap == model.config.softmax_cap == 50.0
        assert isinstance(a.logit_probe, AttentionProbe) and isinstance(a.prob_probe, AttentionProbe)
        assert a.record_attention is False


def test_hook_contract_module_names():
    model = GPT(preset("tiny"))
    names = dict(model.named_modules())
    for i in range(model.config.n_layer):
        for suffix in (
            "attn",
            "attn.qkv",
            "attn.proj",
            "mlp.fc1",
            "mlp.fc2",
            "attn.logit_probe",
            "attn.prob_probe",
            "ln_1",
            "ln_2",
            "attn.q_norm",
            "attn.k_norm",
            "attn.qkv_norm",
            "attn.proj_norm",
            "mlp.fc2_norm",
        ):
            assert f"blocks.{i}.{suffix}" in names
    d = model.config.n_embd
    assert names["blocks.0.attn.qkv"].out_features == 3 * d
    assert names["blocks.0.mlp.fc1"].out_features == 4 * d
    assert names["tok_emb"].num_embeddings == 256
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_backward_shapes(variant):
    torch.manual_seed(0)
    model = GPT(preset("tiny", variant=variant))
    idx = torch.randint(0, 256, (3, 17))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 17, 256)
    assert loss.shape == () and loss.dtype == torch.float32
    # At init the prediction is close to uniform over bytes.
    assert abs(loss.item() - math.log(256)) < 1.5
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model(idx)[1] is None


def test_qkv_output_is_q_k_v_concatenated():
    """The hooks read q, k, v as thirds of the qkv output; check the model uses that order."""
    torch.manual_seed(0)
    model = GPT(preset("tiny")).double()
    attn = model.blocks[0].attn
    x = torch.randn(1, 5, model.config.n_embd, dtype=torch.float64)
    out = attn(x)
    with torch.no_grad():  # swap the q and k thirds: q.k^T becomes k.q^T, the output must change
        w = attn.qkv.weight.clone()
        d = model.config.n_embd
        attn.qkv.weight[:d], attn.qkv.weight[d : 2 * d] = w[d : 2 * d], w[:d]
    assert not torch.allclose(attn(x), out)


def test_init_scaled_residual_projections():
    torch.manual_seed(0)
    model = GPT(preset("small"))
    n = model.config.n_layer
    for block in model.blocks:
        for lin in (block.attn.proj, block.mlp.fc2):
            assert lin.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * n), rel=0.1)
            assert (lin.bias == 0).all()
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_num_params():
    model = GPT(preset("tiny"))
    total = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - model.pos_emb.weight.numel()


def test_record_attention_toggle_does_not_change_output():
    torch.manual_seed(0)
    model = GPT(preset("tiny")).eval()
    idx = torch.randint(0, 256, (2, 20))
    base = model(idx)[0]
    model.set_record_attention(True)
    assert all(b.attn.record_attention for b in model.blocks)
    torch.testing.assert_close(model(idx)[0], base, rtol=1e-5, atol=1e-5)


def test_rejects_long_sequences_and_bad_config():
    model = GPT(preset("tiny"))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="variant"):
        GPTConfig(variant="layernorm_everywhere")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=65, n_head=4)
    with pytest.raises(ValueError, match="fields"):
        preset("tiny", n_layers=3)
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_presets_build():
    assert set(PRESETS) >= {"tiny", "small", "medium"}
    assert GPT(preset("tiny")).num_params() < 200_000
    small = preset("small")
    assert small.block_size >= 128
    assert preset_defaults("small").batch_size == 16
    medium = preset("medium")  # a GPU config: check the shape without allocating it
    assert (medium.n_layer, medium.n_embd, medium.block_size) == (12, 768, 1024)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_short_run_reduces_loss(variant):
    torch.manual_seed(0)
    model = GPT(preset("tiny", variant=variant))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # A fixed, learnable batch: repeated text.
    text = (b"the quick brown fox jumps over the lazy dog. " * 8)[: 4 * 33]
    data = torch.tensor(list(text), dtype=torch.long).view(4, 33)
    x, y = data[:, :-1], data[:, 1:]
    first = model(x, y)[1].item()
    for _ in range(30):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 1.0
