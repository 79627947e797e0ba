"""Attention: the explicit (probe-calling) path equals SDPA where no cap applies, the probes see
masked pre-cap logits and normalised probabilities, and soft-capped logits stay within the cap."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer_hooks.lab.attention import AttentionProbe, CausalSelfAttention, SoftCap
from trainer_hooks.lab.config import VARIANTS, preset

UNCAPPED = [v for v, s in VARIANTS.items() if not s.softmax_cap]
CAPPED = [v for v, s in VARIANTS.items() if s.softmax_cap]


def _attn(variant: str, **kw) -> CausalSelfAttention:
    torch.manual_seed(0)
    attn = CausalSelfAttention(preset("tiny", variant=variant, **kw))
    # Non-trivial LayerNorm affine parameters, so the q/k/qkv norms matter in the comparison.
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return attn.double()


@pytest.mark.parametrize("variant", UNCAPPED)
@pytest.mark.parametrize("T", [1, 7, 64])
def test_explicit_path_matches_sdpa(variant, T):
    attn = _attn(variant)
    x = torch.randn(3, T, attn.n_embd, dtype=torch.float64)
    fast = attn(x)
    attn.record_attention = True
    recorded = attn(x)  # SDPA for the output, probes fed outside autograd
    torch.testing.assert_close(recorded, fast, rtol=1e-10, atol=1e-12)
    # The explicit path (the one the capping variants take) with the cap switched off.
    attn.caps_logits = True
    explicit = attn(x)
    torch.testing.assert_close(explicit, fast, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", UNCAPPED)
def test_recorded_fast_path_keeps_probes_out_of_autograd(variant):
    attn = _attn(variant)
    attn.record_attention = True
    seen = {}
    attn.logit_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    x = torch.randn(2, 5, attn.n_embd, dtype=torch.float64, requires_grad=True)
    attn(x).sum().backward()
    assert not seen["logits"].requires_grad
    assert x.grad is not None


@pytest.mark.parametrize("variant", UNCAPPED + CAPPED)
def test_probes_see_masked_logits_and_probabilities(variant):
    attn = _attn(variant)
    attn.probe_rows = None  # the whole map
    seen = {}
    attn.logit_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    attn.prob_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("probs", o))
    x = torch.randn(2, 9, attn.n_embd, dtype=torch.float64)
    attn(x)
    assert seen == {}  # probes are fed only when recording
    attn.record_attention = True
    attn(x)
    logits, probs = seen["logits"], seen["probs"]
    assert logits.shape == probs.shape == (2, attn.n_head, 9, 9)
    future = torch.ones(9, 9, dtype=torch.bool).triu(1)
    assert torch.isneginf(logits[..., future]).all()
    assert torch.isfinite(logits[..., ~future]).all()
    assert (probs[..., future] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, attn.n_head, 9, dtype=torch.float64))
    # The logit probe sees q.k / sqrt(hs) before any cap.
    q, k, _ = attn.qkv_norm(attn.qkv(x)).split(attn.n_embd, dim=2)
    q = attn.q_norm(q.view(2, 9, attn.n_head, -1).transpose(1, 2))
    k = attn.k_norm(k.view(2, 9, attn.n_head, -1).transpose(1, 2))
    expected = (q @ k.transpose(-2, -1)) / math.sqrt(attn.head_dim)
    torch.testing.assert_close(logits[..., ~future], expected[..., ~future])


def test_capped_variant_matches_explicit_softmax_of_capped_logits():
    attn = _attn("qk_norm_cap", softmax_cap=0.5)  # a small cap, so capping visibly changes results
    x = torch.randn(2, 5, attn.n_embd, dtype=torch.float64)
    seen = {}
    attn.logit_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    attn.prob_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("probs", o))
    attn.record_attention, attn.probe_rows = True, None
    attn(x)
    future = torch.ones(5, 5, dtype=torch.bool).triu(1)
    capped = (0.5 * torch.tanh(seen["logits"] / 0.5)).masked_fill(future, float("-inf"))
    expected = torch.softmax(capped, dim=-1)
    torch.testing.assert_close(seen["probs"], expected)
    assert not torch.allclose(seen["probs"], torch.softmax(seen["logits"], dim=-1))


def test_probe_is_identity():
    x = torch.randn(4, 5)
    assert AttentionProbe()(x) is x


@settings(max_examples=200, deadline=None)
@given(
    cap=st.floats(min_value=1e-3, max_value=1e4),
    values=st.lists(st.floats(allow_nan=False, allow_infinity=True, width=32), min_size=1, max_size=64),
)
def test_soft_cap_bounded_for_any_input(cap, values):
    z = torch.tensor(values, dtype=torch.float32)
    out = SoftCap(cap)(z)
    assert torch.isfinite(out).all()
    assert (out.abs() <= cap * (1 + 1e-6)).all()
    # Order is preserved: capping is monotone.
    order = torch.argsort(z, stable=True)
    assert (out[order].diff() >= 0).all()


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(min_value=1e-2, max_value=1e12), seed=st.integers(0, 2**16))
def test_capped_attention_logits_bounded_in_model(scale, seed):
    """Whatever the magnitude of q and k, what reaches the softmax is within (-c, c) and the
    layer output stays finite."""
    torch.manual_seed(seed)
    attn = CausalSelfAttention(preset("tiny", variant="soft_cap", softmax_cap=50.0))
    attn.record_attention, attn.probe_rows = True, None
    seen = {}
    attn.logit_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    with torch.no_grad():
        attn.qkv.weight.mul_(scale)
    out = attn(torch.randn(2, 16, attn.n_embd))
    capped = attn.logit_cap(seen["logits"])
    visible = ~attn.future_mask[:16, :16]
    assert (capped[..., visible].abs() <= 50.0 * (1 + 1e-6)).all()
    assert torch.isfinite(out).all()


def test_soft_cap_rejects_nonpositive_cap():
    with pytest.raises(ValueError, match="cap"):
        SoftCap(0.0)


@pytest.mark.parametrize("variant", ["baseline", "qk_norm_cap"])
def test_sampled_probes_see_rows_of_one_sequence_rotating(variant):
    """With ``probe_rows=S`` the probes get (1, nh, S, T): rows of the full map, chosen by
    ``probe_index`` from the step counter, which advances once per recorded forward."""
    from trainer_hooks.hooks.stats import probe_index

    attn = _attn(variant)
    attn.record_attention, attn.probe_rows = True, 4
    seen = {}
    attn.logit_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("logits", o))
    attn.prob_probe.register_forward_hook(lambda m, i, o: seen.__setitem__("probs", o))
    x = torch.randn(3, 16, attn.n_embd, dtype=torch.float64)
    full_attn = _attn(variant)
    full_attn.record_attention, full_attn.probe_rows = True, None
    full = {}
    full_attn.logit_probe.register_forward_hook(lambda m, i, o: full.__setitem__("logits", o))
    full_attn.prob_probe.register_forward_hook(lambda m, i, o: full.__setitem__("probs", o))
    full_attn(x)
    picked = set()
    for step in range(6):
        b, rows = probe_index(torch.tensor(step), 3, 16, 4)
        attn(x)
        assert seen["logits"].shape == seen["probs"].shape == (1, attn.n_head, 4, 16)
        for name in ("logits", "probs"):
            torch.testing.assert_close(seen[name][0], full[name][b.item()][:, rows])
        picked.add((b.item(), rows[0].item()))
    assert int(attn.probe_step) == 6 and len(picked) == 6  # every step a different sample
