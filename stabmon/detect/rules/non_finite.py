"""``non_finite``: NaN or infinity in any series, critical at once.

A NaN loss means the step already failed; a NaN or inf in a layer norm or the gradient norm
means the next optimizer step writes garbage into the weights. Keys matching
``critical_patterns`` (loss, grad_norm, every ``layer.*`` statistic by default) are critical,
other keys (user extras such as a throughput counter) only warn. A series stops firing at its
next finite value. To keep the state small, only series currently non-finite are stored.
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any

from stabmon.detect.config import NonFiniteConfig
from stabmon.detect.finding import CRITICAL, QUIET, WARNING
from stabmon.detect.rules.base import Rule
from stabmon.wire import encode_value


class NonFiniteRule(Rule):
    name = "non_finite"
    title = "non-finite values"
    receives_non_finite = True

    def __init__(self, cfg: NonFiniteConfig) -> None:
        super().__init__(cfg)
        self.patterns = tuple(cfg.critical_patterns)

    def accepts(self, key: str, layer: int | None, site: str | None, stat: str) -> bool:
        return True

    def level_for(self, key: str) -> int:
        return CRITICAL if any(fnmatchcase(key, p) for p in self.patterns) else WARNING

    def new_series(self, key: str, layer: int | None) -> dict[str, Any]:
        return {"lvl": QUIET, "v": 0.0, "since": 0, "crit": self.level_for(key)}

    def update(self, s: dict[str, Any], step: int, value: float) -> None:
        if math.isfinite(value):
            s["lvl"] = QUIET
            return
        if s["lvl"] == QUIET:
            s["since"] = step
        s["lvl"], s["v"] = s["crit"], value

    def score(self, s: dict[str, Any]) -> float:
        return -s["since"]  # the earliest failure first

    def describe(self, key: str, s: dict[str, Any]) -> str:
        return f"{key} is {s['v']} (since step {s['since']})"

    def evidence(self, key: str, s: dict[str, Any]) -> dict[str, Any]:
        return {"value": encode_value(s["v"]), "since_step": s["since"]}
