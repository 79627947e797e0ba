"""``norm_growth``: per-site output norms growing step after step, a precursor of divergence.

Rybakov et al. (2024) observe that before a run diverges the L2 norms of the QKV, Proj and FC2
outputs grow step after step. Per series ``layer.{i}.{site}.{stat}`` (sites qkv/q/k/v/proj/fc1/
fc2, stats l2_mean/l2_max) the rule compares a *sustained* current value — the minimum of the
last ``sustain`` observations, so a single outlier batch cannot fire — against two references:

- the smallest value within the last ``window_steps`` steps (a rate: "grew 40x in 25 steps";
  kept as per-bucket minima, so the window is bounded whatever the monitoring cadence),
  which ignores the slow, legitimate growth of norms over a long run. A norm that dipped and
  came back is measured against the highest level before the dip, not the dip (`_before_dip`);
- the run's own early baseline, the median of ``baseline_points`` observations after the
  ``burn_in_steps`` (catches growth too slow for the window).

Nothing is judged during the first ``burn_in_steps`` steps of a series: healthy runs move their
norms by orders of magnitude away from the initialisation scale there (see the config).

When a series starts firing its reference is frozen, so a run that blew up and plateaued at huge
norms keeps firing until its norms come back down (below ``clear_fraction`` of the threshold
relative to that frozen reference). Everything is in log space, so values up to 1e308 are fine.
"""

from __future__ import annotations

import math
from typing import Any

from stabmon.detect.config import NormGrowthConfig
from stabmon.detect.finding import CRITICAL, QUIET, WARNING, fmt
from stabmon.detect.levels import advance, median
from stabmon.detect.rules.base import Rule
from stabmon.wire import encode_value

_TINY = 1e-30  # norms are >= 0; log of an exact 0 is clamped here
_MAX_LOG_RATIO = 700.0  # exp() of more overflows


def _ratio(log_ratio: float) -> float:
    return math.exp(min(log_ratio, _MAX_LOG_RATIO))


def _log(threshold: float | None, shift: float = 0.0) -> float | None:
    return None if threshold is None else math.log(threshold) + shift


def _level(score: float, thresholds: tuple[float | None, float | None]) -> int:
    """``level_of(score, *thresholds)`` without the scale argument (the hot path's variant)."""
    warning, critical = thresholds
    if critical is not None and score >= critical:
        return CRITICAL
    if warning is not None and score >= warning:
        return WARNING
    return QUIET


def _second(p: list[float]) -> float:
    return p[1]


def _before_dip(win: list[list[float]], wm: list[float]) -> list[float] | None:
    """The highest per-bucket minimum *before* the window's minimum ``wm`` (None if there is
    none). Growth is measured past a dip, against this level when it is above the dip: a norm
    that collapses for a few steps and comes back to where it was is not growing. On the `small`
    detection corpus the rule's critical false alarms on stable runs were all such recoveries (a
    last-layer FC2 norm at ~1e3 dropping to 3-20 and bouncing back: "grew 117x in 11 steps (6.7
    -> 1.01e3)"); this removes the 2 of 5 whose level before the dip was still in the window.
    Steady growth is unaffected: its minimum is the oldest entry, with nothing before it. Only
    looked up when the cheap measure would count, so the hot path stays a subtraction."""
    best = None
    for entry in win:
        if entry[0] >= wm[0]:
            break  # entries are oldest first; only those before the minimum count
        if best is None or entry[1] > best[1]:
            best = entry
    return best


def _exp(log_value: float) -> float:
    return math.exp(min(log_value, 709.0))  # a stored log of a finite float is <= 709.8


class NormGrowthRule(Rule):
    name = "norm_growth"
    title = "output norms growing"

    def __init__(self, cfg: NormGrowthConfig) -> None:
        super().__init__(cfg)
        self.sites = frozenset(cfg.sites)
        self.stats = frozenset(cfg.stats)
        clear = math.log(cfg.clear_fraction)
        self.g_enter = (_log(cfg.growth_warning), _log(cfg.growth_critical))
        self.b_enter = (_log(cfg.baseline_warning), _log(cfg.baseline_critical))
        self.g_hold = (_log(cfg.growth_warning, clear), _log(cfg.growth_critical, clear))
        self.b_hold = (_log(cfg.baseline_warning, clear), _log(cfg.baseline_critical, clear))
        # Below the lowest threshold (hold <= enter) the growth cannot change a level.
        self.g_gate = min((t for t in self.g_hold if t is not None), default=math.inf)

    def accepts(self, key: str, layer: int | None, site: str | None, stat: str) -> bool:
        return layer is not None and site in self.sites and stat in self.stats

    def new_series(self, key: str, layer: int | None) -> dict[str, Any]:
        return {
            "lvl": QUIET,
            "sw": 0,
            "sc": 0,
            "f": None,  # first observed step
            "bl": [],
            "b": None,
            "bs": None,  # early baseline: buffer, log value, step
            "win": [],  # [[step, log value], ...]: per-bucket minima, oldest first
            "wm": None,  # the window's minimum entry (oldest of equal minima), kept incrementally
            "rec": [],  # log values of the last `sustain - 1` observations
            "ref": None,
            "rs": None,  # frozen reference (log value, step) while firing
            "v": 0.0,
            "t": 0,
            "g": 0.0,
            "gs": 0,
            "g0": 0.0,
            "bg": 0.0,  # last value and growths, for messages
        }

    def update(self, s: dict[str, Any], step: int, value: float) -> None:
        cfg: NormGrowthConfig = self.cfg
        lv = math.log(max(value, _TINY))
        win, rec = s["win"], s["rec"]
        if s["f"] is None:
            s["f"] = step
        if step - s["f"] < cfg.burn_in_steps:
            # Initialisation transient: remembered for `sustain` only, judged never.
            rec.append(lv)
            while len(rec) >= cfg.sustain:
                rec.pop(0)
            s["v"], s["t"] = value, step
            return
        cur = lv  # sustained value: every one of the last `sustain` observations is this high
        for x in rec:
            if x < cur:
                cur = x

        if s["ref"] is not None:
            g, g_step, g_ref = cur - s["ref"], s["rs"], s["ref"]
        elif win:
            wm = s.get("wm")
            if wm is None:  # a snapshot from before the cached minimum existed
                wm = s["wm"] = list(min(win, key=_second))
            g_step, g_ref = wm  # the oldest of equal minima
            if cur - g_ref >= self.g_gate:  # would count: measure it past a dip, if any
                pre = _before_dip(win, wm)
                if pre is not None and pre[1] > g_ref:
                    g_step, g_ref = pre
            g = cur - g_ref
        else:
            g, g_step, g_ref = 0.0, step, cur
        bg = cur - s["b"] if s["b"] is not None else 0.0

        # Thresholds compared in log space (precomputed): no exp() on the hot path.
        g_enter = _level(g, self.g_enter)
        enter = max(g_enter, _level(bg, self.b_enter))
        hold = max(_level(g, self.g_hold), _level(bg, self.b_hold))
        if advance(s, enter, hold) == QUIET:
            s["ref"] = s["rs"] = None
        elif s["ref"] is None and g_enter > QUIET:
            # Freeze the window reference that made it fire: a run that blew up and plateaued
            # keeps firing after the pre-blow-up values have left the window. (The baseline
            # criterion needs no freezing: the baseline never moves.)
            s["ref"], s["rs"] = g_ref, g_step
        s["v"], s["t"], s["g"], s["gs"], s["g0"], s["bg"] = value, step, g, step - g_step, g_ref, bg

        rec.append(lv)
        while len(rec) >= cfg.sustain:
            rec.pop(0)
        # The window keeps one minimum per bucket of `window_steps / window_points` steps, so it
        # spans `window_steps` whatever the monitoring cadence, in at most `window_points` entries.
        # The window's minimum ("wm", oldest of equal minima) is kept alongside it: recomputing it
        # per observation was the detector's hottest line (96 series x every step).
        width = max(1, cfg.window_steps // cfg.window_points)
        wm = s.get("wm") if win else None
        if wm is None and win:
            wm = list(min(win, key=_second))
        if win and win[-1][0] // width == step // width:
            if lv < win[-1][1]:
                if wm[0] == win[-1][0] or lv < wm[1]:
                    wm = [step, lv]
                win[-1] = [step, lv]
        else:
            win.append([step, lv])
            if wm is None or lv < wm[1]:
                wm = [step, lv]
        while len(win) > cfg.window_points or (
            len(win) > cfg.window_min_points and win[0][0] < step - cfg.window_steps
        ):
            if win.pop(0)[0] == wm[0]:
                wm = list(min(win, key=_second)) if win else None
        s["wm"] = wm
        if s["b"] is None:
            s["bl"].append(lv)
            if len(s["bl"]) >= cfg.baseline_points:
                s["b"], s["bs"], s["bl"] = median(s["bl"]), step, []

    def score(self, s: dict[str, Any]) -> float:
        return max(s["g"], s["bg"])

    def describe(self, key: str, s: dict[str, Any]) -> str:
        if s["b"] is not None and s["bg"] > s["g"]:
            ratio, ref, steps, what = s["bg"], s["b"], s["t"] - s["bs"], " over its early baseline"
        else:
            ratio, ref, steps, what = s["g"], s["g0"], s["gs"], ""
        return f"{key} grew {fmt(_ratio(ratio))}x{what} in {steps} steps ({fmt(_exp(ref))} -> {fmt(s['v'])})"

    def evidence(self, key: str, s: dict[str, Any]) -> dict[str, Any]:
        return {
            "value": encode_value(s["v"]),
            "growth": encode_value(_ratio(s["g"])),
            "growth_steps": s["gs"],
            "reference": encode_value(_exp(s["g0"])),
            "baseline_growth": encode_value(_ratio(s["bg"])) if s["b"] is not None else None,
        }
