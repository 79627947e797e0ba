"""Model configuration, the norm variants and the size presets.

`GPTConfig` is one flat dataclass (nanoGPT style); its `variant` field names one of the
normalisation schemes compared in Rybakov et al. 2024, "Methods of improving LLM training
stability" (arXiv 2410.16682). `VARIANTS` spells out, per variant, which LayerNorms exist and
whether attention logits are soft-capped, so the model resolves a variant once, in its
constructor, by reading a `VariantSpec`. `preset(name)` returns the model config of a named
size together with the training defaults that go with it (`preset_defaults(name)`):
``tiny`` for tests, ``small`` for the demo and the CPU experiments, ``base`` (~25M parameters)
and ``medium`` for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class VariantSpec:
    """Where a variant puts its extra LayerNorms and whether it caps attention logits."""

    pre_attn_ln: bool = True
    """LayerNorm on the block input before QKV (``ln_1``). Removed by ``qkv_norm``."""
    qk_norm: bool = False
    """LayerNorm on each head's queries and keys (over head_dim), after the QKV projection."""
    qkv_norm: bool = False
    """LayerNorm over the whole (3d) QKV output."""
    out_norm: bool = False
    """LayerNorm on the outputs of Proj and FC2, before each residual add."""
    softmax_cap: bool = False
    """Attention logits z -> c * tanh(z / c) before the softmax."""


VARIANTS: dict[str, VariantSpec] = {
    "baseline": VariantSpec(),
    "qk_norm": VariantSpec(qk_norm=True),
    "qk_fc_norm": VariantSpec(qk_norm=True, out_norm=True),
    "qkv_norm": VariantSpec(pre_attn_ln=False, qkv_norm=True),
    "qk_norm_cap": VariantSpec(qk_norm=True, softmax_cap=True),
    "soft_cap": VariantSpec(softmax_cap=True),
}
"""The variants of the paper; ``soft_cap`` (capping without QK norm) is its reference variant."""


@dataclass
class GPTConfig:
    """A byte-level decoder-only GPT."""

    block_size: int = 128
    """Context length (maximum sequence length)."""
    vocab_size: int = 256
    """Bytes."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    """Biases in Linear layers and LayerNorms."""
    variant: str = "baseline"
    """One of `VARIANTS`."""
    softmax_cap: float = 50.0
    """The cap c of the capping variants."""
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.softmax_cap > 0:
            raise ValueError(f"softmax_cap must be > 0, got {self.softmax_cap}")

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TrainDefaults:
    """Training settings that go with a model size; `TrainConfig` fields left at None take these."""

    batch_size: int
    steps: int
    lr: float
    warmup: int
    eval_every: int
    eval_batches: int


@dataclass(frozen=True)
class Preset:
    model: GPTConfig
    train: TrainDefaults


PRESETS: dict[str, Preset] = {
    # ~0.1M parameters: 100 steps take a few seconds on one CPU thread. For tests.
    "tiny": Preset(
        GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64),
        TrainDefaults(batch_size=8, steps=100, lr=3e-3, warmup=10, eval_every=50, eval_batches=4),
    ),
    # The demo and the CPU experiments, ~0.47M parameters: sized so that a 300-step run at
    # batch 16 x 128 tokens takes ~35 s on one CPU thread (d=128 took ~55 s), which lets a
    # sweep plus a detection corpus of >100 such runs finish on a 2-core machine in ~35 min.
    "small": Preset(
        GPTConfig(block_size=128, n_layer=4, n_head=4, n_embd=96),
        TrainDefaults(batch_size=16, steps=300, lr=3e-3, warmup=30, eval_every=100, eval_batches=8),
    ),
    # ~25M parameters, for a GPU corpus (`bench/gpu_detection.py`): under bf16 autocast a
    # 1000-step run at batch 32 x 256 tokens is meant to take about a minute on one H100.
    "base": Preset(
        GPTConfig(block_size=256, n_layer=8, n_head=8, n_embd=512),
        TrainDefaults(batch_size=32, steps=1000, lr=1e-3, warmup=50, eval_every=250, eval_batches=8),
    ),
    # GPT-2 small shape, for a GPU.
    "medium": Preset(
        GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768),
        TrainDefaults(batch_size=16, steps=5000, lr=6e-4, warmup=200, eval_every=250, eval_batches=20),
    ),
}


def _lookup(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def preset(name: str, **overrides) -> GPTConfig:
    """A fresh `GPTConfig` of the named size; keyword overrides (e.g. ``variant=``) are validated."""
    cfg = _lookup(name).model
    known = {f.name for f in fields(GPTConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown GPTConfig fields: {', '.join(sorted(unknown))}")
    return replace(cfg, **overrides)


def preset_defaults(name: str) -> TrainDefaults:
    """The training defaults of the named preset."""
    return _lookup(name).train
