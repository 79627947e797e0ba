"""``loss_spike`` and ``grad_spike``: robust z-scores of a run-level series against a rolling window.

The after-the-fact spike counters of OLMo and LLM Foundry, made online: for each new value the
rule takes the median and the MAD of the previous ``window`` finite values, scales the MAD to a
Gaussian sigma (x1.4826, floored at ``sigma_floor`` x |median| so a flat plateau does not turn
noise into sigmas) and computes z = (x - median) / sigma. A level needs both the z-score and a
relative rise (x above the median by ``rel_*`` of it). Every value joins the window afterwards,
so a lasting shift becomes the new normal and the alert resolves; a spike that recovers clears
at the next normal value. Only upward moves count: a falling loss is good news.
"""

from __future__ import annotations

from typing import Any

from stabmon.detect.config import SpikeConfig
from stabmon.detect.finding import QUIET, fmt
from stabmon.detect.levels import advance, level_of, median_mad
from stabmon.detect.rules.base import Rule
from stabmon.wire import encode_value

_MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian is 0.6745 sigma
_EPS = 1e-12


class SpikeRule(Rule):
    def __init__(self, name: str, title: str, cfg: SpikeConfig) -> None:
        super().__init__(cfg)
        self.name, self.title = name, title
        self.keys = frozenset(cfg.keys)

    def accepts(self, key: str, layer: int | None, site: str | None, stat: str) -> bool:
        return key in self.keys

    def new_series(self, key: str, layer: int | None) -> dict[str, Any]:
        return {"lvl": QUIET, "sw": 0, "sc": 0, "win": [], "v": 0.0, "med": 0.0, "z": 0.0, "rel": 0.0}

    def update(self, s: dict[str, Any], step: int, value: float) -> None:
        cfg: SpikeConfig = self.cfg
        win = s["win"]
        enter = hold = QUIET
        if len(win) >= cfg.min_points:
            med, mad = median_mad(win)
            sigma = max(_MAD_TO_SIGMA * mad, cfg.sigma_floor * abs(med), _EPS)
            # Differences of huge floats can overflow to inf; the comparisons below still work.
            z = (value - med) / sigma
            rel = (value - med) / max(abs(med), _EPS)
            enter = min(
                level_of(z, cfg.z_warning, cfg.z_critical), level_of(rel, cfg.rel_warning, cfg.rel_critical)
            )
            hold = min(
                level_of(z, cfg.z_warning, cfg.z_critical, cfg.clear_fraction),
                level_of(rel, cfg.rel_warning, cfg.rel_critical, cfg.clear_fraction),
            )
            s["med"], s["z"], s["rel"] = med, z, rel
        advance(s, enter, hold, cfg.sustain_warning, cfg.sustain_critical)
        s["v"] = value
        win.append(value)
        while len(win) > cfg.window:
            win.pop(0)

    def score(self, s: dict[str, Any]) -> float:
        return s["z"]

    def describe(self, key: str, s: dict[str, Any]) -> str:
        return (
            f"{key} {fmt(s['v'])} is {fmt(s['z'])} robust sigmas above its rolling median "
            f"{fmt(s['med'])} (+{fmt(100.0 * s['rel'])}%)"
        )

    def evidence(self, key: str, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "value": encode_value(s["v"]),
            "median": encode_value(s["med"]),
            "z": encode_value(s["z"]),
            "rel": encode_value(s["rel"]),
        }
