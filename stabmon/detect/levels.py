"""Small numeric building blocks shared by the rules: threshold levels with hysteresis, and
robust statistics over short windows.

Hysteresis keeps an alert stable: a level is *entered* when a score passes its threshold for
``sustain`` consecutive observations, and *held* until the score falls below the threshold
times ``clear_fraction``. The per-series hysteresis state is a plain dict (``lvl``, and the
streaks ``sw``/``sc`` of consecutive observations over the warning/critical bar) so the
detector state stays trivially JSON-able.
"""

from __future__ import annotations

from typing import Any

from stabmon.detect.finding import CRITICAL, QUIET, WARNING


def level_of(score: float, warning: float | None, critical: float | None, scale: float = 1.0) -> int:
    """The level whose threshold (times ``scale``) ``score`` reaches; None disables a level."""
    if critical is not None and score >= critical * scale:
        return CRITICAL
    if warning is not None and score >= warning * scale:
        return WARNING
    return QUIET


def new_hysteresis() -> dict[str, Any]:
    return {"lvl": QUIET, "sw": 0, "sc": 0}


def advance(
    s: dict[str, Any], enter: int, hold: int, sustain_warning: int = 1, sustain_critical: int = 1
) -> int:
    """Move the series' level given this observation's ``enter`` level (strict thresholds) and
    ``hold`` level (relaxed thresholds). Returns the new level."""
    s["sw"] = s["sw"] + 1 if enter >= WARNING else 0
    s["sc"] = s["sc"] + 1 if enter >= CRITICAL else 0
    entered = CRITICAL if s["sc"] >= sustain_critical else WARNING if s["sw"] >= sustain_warning else QUIET
    # Once at a level, stay there while the relaxed (hold) condition allows; a critical series
    # whose score drops below the relaxed critical bar but not the warning one steps down to warning.
    s["lvl"] = max(entered, min(s["lvl"], hold))
    return s["lvl"]


def median(xs: list[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    mid = n // 2
    return ys[mid] if n % 2 else 0.5 * (ys[mid - 1] + ys[mid])


def median_mad(xs: list[float]) -> tuple[float, float]:
    """Median and median absolute deviation (unscaled)."""
    m = median(xs)
    return m, median([abs(x - m) for x in xs])
