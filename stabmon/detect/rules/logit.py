"""``logit_max``: attention-logit maxima against absolute bounds.

Wortsman et al. (2023) found that every run whose attention logits passed ~1e4 diverged, and
Kimi K2's MuonClip rescales the query/key weights once logits pass 100; QK-normalised models
stay in the tens. ``layer.{i}.attn.logit_max`` (the exact maximum of q.k/sqrt(d)) is compared to
``warning``/``critical``; ``layer.{i}.attn.logit_bound`` (an upper bound, e.g. |q|max*|k|max for
rotary models, where the exact maximum is expensive) to the looser ``bound_*`` thresholds.
Logits are maxima over a batch and therefore noisy, so the warning needs ``sustain_warning``
consecutive observations; the critical bar is high enough to fire at once.
"""

from __future__ import annotations

from typing import Any

from stabmon.detect.config import LogitConfig
from stabmon.detect.finding import QUIET, fmt
from stabmon.detect.levels import advance, level_of
from stabmon.detect.rules.base import Rule
from stabmon.wire import encode_value


class LogitRule(Rule):
    name = "logit_max"
    title = "attention logits large"

    def __init__(self, cfg: LogitConfig) -> None:
        super().__init__(cfg)

    def accepts(self, key: str, layer: int | None, site: str | None, stat: str) -> bool:
        return layer is not None and site == "attn" and stat in ("logit_max", "logit_bound")

    def new_series(self, key: str, layer: int | None) -> dict[str, Any]:
        return {
            "lvl": QUIET,
            "sw": 0,
            "sc": 0,
            "L": layer,
            "bound": key.endswith(".logit_bound"),
            "v": 0.0,
            "peak": 0.0,
        }

    def update(self, s: dict[str, Any], step: int, value: float) -> None:
        cfg: LogitConfig = self.cfg
        warn, crit = (cfg.bound_warning, cfg.bound_critical) if s["bound"] else (cfg.warning, cfg.critical)
        v = abs(value)  # a large negative maximum is as pathological as a large positive one
        enter = level_of(v, warn, crit)
        hold = level_of(v, warn, crit, cfg.clear_fraction)
        advance(s, enter, hold, cfg.sustain_warning, cfg.sustain_critical)
        s["v"] = value
        s["peak"] = max(s["peak"], v)

    def score(self, s: dict[str, Any]) -> float:
        # Exact maxima rank above bounds of the same size.
        return abs(s["v"]) / (10.0 if s["bound"] else 1.0)

    def describe(self, key: str, s: dict[str, Any]) -> str:
        what = "attention logit bound" if s["bound"] else "attention logit max"
        return f"{what} {fmt(s['v'])} in layer {s['L']} (peak {fmt(s['peak'])})"

    def evidence(self, key: str, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "layer": s["L"],
            "value": encode_value(s["v"]),
            "peak": encode_value(s["peak"]),
            "bound": s["bound"],
        }
