"""The rule interface and the aggregation every rule shares.

A rule owns the series it ``accepts`` (decided once per key from its parsed
``layer.{i}.{site}.{stat}`` form), keeps a small plain-dict state per series, and updates that
state in O(1)-ish time per observation. After a step's updates, :meth:`Rule.finding` folds the
per-series levels into at most one :class:`~stabmon.detect.finding.Finding`: the severity is the
worst series' level (capped by the rule's ``max_severity``), and the message names the worst
few series, so one alert per (run, rule) carries "layer.3.fc2.l2_mean grew 40x in 25 steps".
"""

from __future__ import annotations

from typing import Any

from stabmon.detect.finding import LEVEL_NAMES, QUIET, SEVERITY_LEVELS, Finding


class Rule:
    """One detection rule. Subclasses set ``name``/``title`` and implement the hooks below."""

    name: str = ""
    title: str = ""
    receives_non_finite: bool = False
    """True only for the rule that watches NaN/inf; the others see finite values only."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.cap = SEVERITY_LEVELS[cfg.max_severity]

    # -- per-series hooks ---------------------------------------------------------------------
    def accepts(self, key: str, layer: int | None, site: str | None, stat: str) -> bool:
        raise NotImplementedError

    def new_series(self, key: str, layer: int | None) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, s: dict[str, Any], step: int, value: float) -> None:
        """Fold one observation into the series state (sets ``s["lvl"]``)."""
        raise NotImplementedError

    def score(self, s: dict[str, Any]) -> float:
        """How bad the series is, to rank series within one level."""
        raise NotImplementedError

    def describe(self, key: str, s: dict[str, Any]) -> str:
        raise NotImplementedError

    def evidence(self, key: str, s: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    # -- aggregation --------------------------------------------------------------------------
    def finding(self, series: dict[str, dict[str, Any]], step: int, n_message: int, n_evidence: int):
        active = [(k, s) for k, s in series.items() if s["lvl"] > QUIET]
        if not active:
            return None
        active.sort(key=lambda ks: (ks[1]["lvl"], self.score(ks[1])), reverse=True)
        level = min(active[0][1]["lvl"], self.cap)
        parts = [self.describe(k, s) for k, s in active[:n_message]]
        more = len(active) - len(parts)
        message = f"{self.title}: " + "; ".join(parts) + (f" (+{more} more series)" if more > 0 else "")
        evidence = {
            "active_series": len(active),
            "series": [
                {"key": k, "severity": LEVEL_NAMES[min(s["lvl"], self.cap)], **self.evidence(k, s)}
                for k, s in active[:n_evidence]
            ],
        }
        return Finding(
            rule=self.name, severity=LEVEL_NAMES[level], step=step, message=message, evidence=evidence
        )
