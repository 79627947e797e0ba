"""Finding the modules to monitor: built-in naming rules for common transformers, or a mapping.

A *site* is the role a module plays in a transformer block: the fused ``qkv`` projection (or
separate ``q``/``k``/``v``), the attention output ``proj``, the MLP's ``fc1`` (and ``gate`` for
gated MLPs) and ``fc2``, plus the attention probes of stabmon's own model (``logit_probe``,
``prob_probe``, ``qk_probe``: identity modules called with the attention logits, probabilities and
``(q, k)``). Besides these, a block's output is the ``resid`` site (residual-stream max |x|), its
normalisation layers are parameter-only sites (:data:`NORM_SITES`: their gains' norms, gradients
and updates), and ``lm_head`` / ``final_norm`` are model-level sites (layer ``-1``). Sites are
found by matching each module's qualified name against regular expressions whose named group
``layer`` (or else the first integer in the name) gives the block index. Built-in rules cover
stabmon's ``GPT`` (``blocks.{i}.attn.qkv``), nanoGPT and Hugging Face GPT-2
(``h.{i}.attn.c_attn``), and the Llama family (``layers.{i}.self_attn.q_proj``: Llama, Mistral,
Qwen2, ...). Llama's gated MLP maps ``up_proj`` -> ``fc1``, ``gate_proj`` -> ``gate`` and
``down_proj`` -> ``fc2``. Anything else is mapped with ``attach(model, sites={regex: site})``;
a model that matches nothing gets an error that shows how.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from torch import nn

OUTPUT_SITES = ("qkv", "q", "k", "v", "proj", "fc1", "gate", "fc2")
"""Sites whose output L2 norms are recorded (``layer.{i}.{site}.l2_mean`` / ``l2_max``)."""
PROBE_SITES = ("logit_probe", "prob_probe", "qk_probe")
"""Identity modules that receive attention logits / probabilities / (q, k) (``layer.{i}.attn.*``)."""
NORM_SITES = ("attn_norm", "mlp_norm", "qkv_norm", "q_norm", "k_norm", "proj_norm", "fc2_norm")
"""Normalisation layers of a block: only their parameters are monitored (no forward hook)."""
BLOCK_SITES = ("resid",)
"""The block itself: its output is the residual stream after the block."""
MODEL_SITES = ("lm_head", "final_norm")
"""Model-level modules (layer -1): the LM head's logits, the final normalisation's gain."""
ALL_SITES = OUTPUT_SITES + PROBE_SITES + NORM_SITES + BLOCK_SITES + MODEL_SITES


class SiteRef(NamedTuple):
    """Where a module sits: block index and site role."""

    layer: int
    site: str


_L = r"(?P<layer>\d+)"
# Rules are anchored on a component boundary and at the end, so wrappers that prefix names
# (DDP's ``module.``, torch.compile's ``_orig_mod.``, ``model.``/``transformer.``) still match.
BUILTIN_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "stabmon": (
        (rf"(?:^|\.)blocks\.{_L}\.attn\.qkv$", "qkv"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.proj$", "proj"),
        (rf"(?:^|\.)blocks\.{_L}\.mlp\.fc1$", "fc1"),
        (rf"(?:^|\.)blocks\.{_L}\.mlp\.fc2$", "fc2"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.logit_probe$", "logit_probe"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.prob_probe$", "prob_probe"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.qk_probe$", "qk_probe"),
        (rf"(?:^|\.)blocks\.{_L}$", "resid"),
        (rf"(?:^|\.)blocks\.{_L}\.ln_1$", "attn_norm"),
        (rf"(?:^|\.)blocks\.{_L}\.ln_2$", "mlp_norm"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.qkv_norm$", "qkv_norm"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.q_norm$", "q_norm"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.k_norm$", "k_norm"),
        (rf"(?:^|\.)blocks\.{_L}\.attn\.proj_norm$", "proj_norm"),
        (rf"(?:^|\.)blocks\.{_L}\.mlp\.fc2_norm$", "fc2_norm"),
        (r"(?:^|\.)ln_f$", "final_norm"),
        (r"(?:^|\.)lm_head$", "lm_head"),
    ),
    "gpt2": (
        (rf"(?:^|\.)h\.{_L}\.attn\.c_attn$", "qkv"),
        (rf"(?:^|\.)h\.{_L}\.attn\.c_proj$", "proj"),
        (rf"(?:^|\.)h\.{_L}\.mlp\.c_fc$", "fc1"),
        (rf"(?:^|\.)h\.{_L}\.mlp\.c_proj$", "fc2"),
        (rf"(?:^|\.)h\.{_L}$", "resid"),
        (rf"(?:^|\.)h\.{_L}\.ln_1$", "attn_norm"),
        (rf"(?:^|\.)h\.{_L}\.ln_2$", "mlp_norm"),
        (r"(?:^|\.)ln_f$", "final_norm"),
        (r"(?:^|\.)lm_head$", "lm_head"),
    ),
    "llama": (
        (rf"(?:^|\.)layers\.{_L}\.self_attn\.q_proj$", "q"),
        (rf"(?:^|\.)layers\.{_L}\.self_attn\.k_proj$", "k"),
        (rf"(?:^|\.)layers\.{_L}\.self_attn\.v_proj$", "v"),
        (rf"(?:^|\.)layers\.{_L}\.self_attn\.o_proj$", "proj"),
        (rf"(?:^|\.)layers\.{_L}\.mlp\.up_proj$", "fc1"),
        (rf"(?:^|\.)layers\.{_L}\.mlp\.gate_proj$", "gate"),
        (rf"(?:^|\.)layers\.{_L}\.mlp\.down_proj$", "fc2"),
        (rf"(?:^|\.)layers\.{_L}$", "resid"),
        (rf"(?:^|\.)layers\.{_L}\.input_layernorm$", "attn_norm"),
        (rf"(?:^|\.)layers\.{_L}\.post_attention_layernorm$", "mlp_norm"),
        (rf"(?:^|\.)layers\.{_L}\.self_attn\.q_norm$", "q_norm"),
        (rf"(?:^|\.)layers\.{_L}\.self_attn\.k_norm$", "k_norm"),
        (r"(?:^|\.)model\.norm$", "final_norm"),
        (r"(?:^|\.)lm_head$", "lm_head"),
    ),
}

SITES_EXAMPLE = (
    "attach(model, sites={\n"
    '    r"layers\\.(\\d+)\\.attention\\.wqkv$": "qkv",   # fused q|k|v  (or "q", "k", "v")\n'
    '    r"layers\\.(\\d+)\\.attention\\.wo$": "proj",\n'
    '    r"layers\\.(\\d+)\\.feed_forward\\.w1$": "fc1",\n'
    '    r"layers\\.(\\d+)\\.feed_forward\\.w2$": "fc2",\n'
    "})"
)

_FIRST_INT = re.compile(r"\d+")


def _layer_of(name: str, match: re.Match[str]) -> int | None:
    if "layer" in match.re.groupindex and match.group("layer") is not None:
        return int(match.group("layer"))
    m = _FIRST_INT.search(name)
    return int(m.group()) if m else None


def _compile_mapping(sites: Mapping[str, str]) -> list[tuple[re.Pattern[str], str]]:
    rules = []
    for pattern, site in sites.items():
        if site not in ALL_SITES:
            raise ValueError(
                f"sites={{{pattern!r}: {site!r}}}: unknown site {site!r}; expected one of {ALL_SITES}"
            )
        try:
            rules.append((re.compile(pattern), site))
        except re.error as e:
            raise ValueError(f"sites: invalid regular expression {pattern!r}: {e}") from e
    return rules


def match_sites(model: nn.Module, rules: list[tuple[re.Pattern[str], str]]) -> dict[str, SiteRef]:
    """Module name -> :class:`SiteRef` for every module that a rule matches (``re.search``).

    The first matching rule wins for a module. Raises ValueError when a matched name carries no
    layer index, or when two modules claim the same (layer, site).
    """
    found: dict[str, SiteRef] = {}
    owner: dict[SiteRef, str] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        for pattern, site in rules:
            m = pattern.search(name)
            if m is None:
                continue
            if site in NORM_SITES + ("final_norm",) and not any(
                True for _ in module.parameters(recurse=False)
            ):
                break  # an Identity standing in for a norm the variant does not use
            layer = -1 if site in MODEL_SITES else _layer_of(name, m)
            if layer is None:
                raise ValueError(
                    f"module {name!r} matches {pattern.pattern!r} but its name has no layer index: "
                    "use a named group (?P<layer>\\d+) or a name with an integer in it"
                )
            ref = SiteRef(layer, site)
            if ref in owner:
                raise ValueError(
                    f"modules {owner[ref]!r} and {name!r} both map to layer {layer} site {site!r}; "
                    "make the patterns more specific (anchor them with '$')"
                )
            owner[ref] = name
            found[name] = ref
            break
    return found


def discover_sites(
    model: nn.Module, sites: Mapping[str, str] | None = None
) -> tuple[str, dict[str, SiteRef]]:
    """Return ``(family, {module name: SiteRef})`` for ``model``.

    With ``sites`` (regex -> site), only that mapping is used (family ``"custom"``); otherwise
    the built-in families are tried in order and the first that matches anything is used.
    Raises ValueError, with an example of the ``sites=`` argument, when nothing matches.
    """
    if sites is not None:
        if not sites:
            raise ValueError(
                "sites={} maps nothing; pass None for auto-discovery. Example:\n" + SITES_EXAMPLE
            )
        found = match_sites(model, _compile_mapping(sites))
        if not found:
            raise ValueError(
                f"no module name matches any of the patterns {list(sites)} (matched with re.search). "
                + _name_hint(model)
            )
        return "custom", found
    for family, rules in BUILTIN_RULES.items():
        found = match_sites(model, [(re.compile(p), s) for p, s in rules])
        if any(ref.site in OUTPUT_SITES for ref in found.values()):
            return family, found
    raise ValueError(
        f"stabmon does not recognise the architecture of {type(model).__name__}: none of its module "
        "names follow stabmon's GPT (blocks.{i}.attn.qkv), nanoGPT/GPT-2 (h.{i}.attn.c_attn) or "
        "Llama (layers.{i}.self_attn.q_proj) naming. Map its modules explicitly (regex -> site, "
        "the layer index is the named group 'layer' or the first integer in the name; sites: "
        f"{', '.join(OUTPUT_SITES)}), e.g.\n{SITES_EXAMPLE}\n" + _name_hint(model)
    )


def _name_hint(model: nn.Module, limit: int = 12) -> str:
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"Leaf modules of this model: {shown}"
