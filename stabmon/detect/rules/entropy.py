"""``entropy_collapse``: attention entropy falling towards 0 relative to its early baseline.

Growing attention logits make the softmax one-hot; Zhai et al. (2023) call the resulting low
attention entropy "entropy collapse" and tie it to loss spikes and divergence. Per series
``layer.{i}.attn.entropy_mean`` the rule takes the entropy at initialisation as the baseline
(median of the first ``baseline_points`` observations: attention starts near-uniform, so this is
a natural reference, and unstable runs collapse within a few steps) and fires when the sustained
current value (the *largest* of the last ``sustain`` observations: all of them must be low) fell
to 1/``drop_warning`` or 1/``drop_critical`` of it. Healthy training sharpens attention a few
fold (at most 3.4x in the calibration runs); a collapse is an order of magnitude or more.
"""

from __future__ import annotations

from typing import Any

from stabmon.detect.config import EntropyConfig
from stabmon.detect.finding import QUIET, fmt
from stabmon.detect.levels import advance, level_of, median
from stabmon.detect.rules.base import Rule
from stabmon.wire import encode_value

_FLOOR = 1e-12  # entropy 0 (exactly one-hot) gives a finite, huge drop factor


class EntropyRule(Rule):
    name = "entropy_collapse"
    title = "attention entropy collapsing"

    def __init__(self, cfg: EntropyConfig) -> None:
        super().__init__(cfg)

    def accepts(self, key: str, layer: int | None, site: str | None, stat: str) -> bool:
        return layer is not None and site == "attn" and stat == "entropy_mean"

    def new_series(self, key: str, layer: int | None) -> dict[str, Any]:
        return {
            "lvl": QUIET,
            "sw": 0,
            "sc": 0,
            "L": layer,
            "n": 0,
            "bl": [],
            "b": None,
            "rec": [],
            "v": 0.0,
            "drop": 1.0,
        }

    def update(self, s: dict[str, Any], step: int, value: float) -> None:
        cfg: EntropyConfig = self.cfg
        rec = s["rec"]
        rec.append(value)
        while len(rec) > cfg.sustain:
            rec.pop(0)
        drop = 1.0
        if s["b"] is not None and s["b"] > _FLOOR and len(rec) >= cfg.sustain:
            drop = s["b"] / max(max(rec), _FLOOR)
        enter = level_of(drop, cfg.drop_warning, cfg.drop_critical)
        hold = level_of(drop, cfg.drop_warning, cfg.drop_critical, cfg.clear_fraction)
        advance(s, enter, hold)
        s["v"], s["drop"] = value, drop
        s["n"] += 1
        if s["b"] is None and s["n"] > cfg.burn_in:
            s["bl"].append(value)
            if len(s["bl"]) >= cfg.baseline_points:
                s["b"], s["bl"] = median(s["bl"]), []

    def score(self, s: dict[str, Any]) -> float:
        return s["drop"]

    def describe(self, key: str, s: dict[str, Any]) -> str:
        return (
            f"layer {s['L']} attention entropy {fmt(s['v'])}, 1/{fmt(s['drop'])} of its early {fmt(s['b'])}"
        )

    def evidence(self, key: str, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "layer": s["L"],
            "value": encode_value(s["v"]),
            "baseline": encode_value(s["b"]),
            "drop": encode_value(s["drop"]),
        }
