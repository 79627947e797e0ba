"""Small models and helpers shared by the hook tests (no tests of its own).

``NanoGPT`` follows nanoGPT's module names (``transformer.h.{i}.attn.c_attn`` ...) with
``nn.Linear`` layers; ``gpt2()`` and ``llama()`` build tiny Hugging Face models from a config
(no download). ``Capture`` records module outputs with its own forward hooks, so the tests can
recompute every statistic directly from the same tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer_hooks.lab.config import preset
from trainer_hooks.lab.model import GPT


class NanoAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class NanoMLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = NanoAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = NanoMLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's layout: ``transformer.{wte,wpe,h,ln_f}`` and ``lm_head``; returns the mean loss."""

    def __init__(
        self, vocab: int = 64, d: int = 32, n_layer: int = 2, n_head: int = 4, block: int = 32
    ) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, d),
                wpe=nn.Embedding(block, d),
                h=nn.ModuleList(NanoBlock(d, n_head) for _ in range(n_layer)),
                ln_f=nn.LayerNorm(d),
            )
        )
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))


def nano(seed: int = 0, **kw) -> NanoGPT:
    torch.manual_seed(seed)
    return NanoGPT(**kw)


def stabmon_gpt(variant: str = "baseline", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(preset("tiny", variant=variant))
    with torch.no_grad():  # non-trivial LayerNorm affines, so the variants' norms matter
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.uniform_(-0.2, 0.2)
    return model


def gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_positions=32,
        vocab_size=64,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(cfg)


def llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg)


def loss_of(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """The training loss of any of the test models on token ids ``idx`` (B, T)."""
    base = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    base = getattr(base, "module", base)  # DDP's wrapper
    if isinstance(base, GPT):
        return model(idx, idx)[1]
    if isinstance(base, NanoGPT):
        return model(idx)
    return model(input_ids=idx, labels=idx).loss


class ListSink:
    """The smallest sink: keeps records in a list."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.flushes = 0
        self.closed = False

    def write(self, record: dict) -> None:
        self.records.append(record)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


class Capture:
    """Keeps the float64 copy of every output of the named modules, per forward call."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, args, out):
            self.out[name].append(out.detach().double().clone())

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def token_norms(x: torch.Tensor) -> torch.Tensor:
    """Per-token L2 norms of (..., d), computed the long way."""
    return (x.double() ** 2).sum(-1).sqrt().flatten()


def causal_abs_max(q: torch.Tensor, k: torch.Tensor, scale: float) -> float:
    """max |q_i . k_j| * scale over j <= i, for (B, nh, T, hs) q and k, with einsum."""
    z = torch.einsum("bhid,bhjd->bhij", q.double(), k.double()) * scale
    T = z.shape[-1]
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return z.abs()[..., allowed].max().item()


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)


def all_hooks_empty(model: nn.Module) -> bool:
    attrs = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_pre_hooks_with_kwargs",
        "_forward_hooks_always_called",
    )
    return all(not getattr(m, a, {}) for m in model.modules() for a in attrs)
