"""The streaming detector: one step's values in, the rules firing at that step out.

:class:`Detector` is stateless apart from a cache of key routing; all per-run state lives in a
:class:`~stabmon.detect.state.DetectorState`, so one Detector serves many runs and a state can be
snapshotted, restored or rebuilt with :func:`replay`. ``observe`` costs O(keys) per step: each key
is routed once (cached) to the rules that watch it, each rule updates a bounded per-series state,
and each rule folds its series into at most one Finding. Pure Python: no I/O, no framework
imports, so the collector runs it online and ``bench/`` offline over recorded runs.

Contract details:
- steps must arrive in increasing order; a step <= the last one seen is ignored (returns ``[]``),
  which makes re-delivered batches harmless;
- steps may be sparse and may omit keys; a series keeps its level until it is observed again;
- each rule tracks at most ``max_series_per_rule`` series per run (keys beyond it are ignored);
- values may be NaN/inf (only ``non_finite`` looks at those; the other rules skip them), ints,
  or the wire's strings "nan"/"inf"/"-inf"; anything not convertible to float is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from stabmon.detect.config import DetectorConfig
from stabmon.detect.finding import Finding
from stabmon.detect.rules import EntropyRule, LogitRule, NonFiniteRule, NormGrowthRule, Rule, SpikeRule
from stabmon.detect.state import DetectorState
from stabmon.wire import match_layer_key

# Same grammar as stabmon.wire's layer keys; matched here directly because routing must accept
# any string without raising (wire.parse_key raises on keys outside the grammar).
_ROUTE_CACHE_MAX = 65_536


def _as_float(v: Any) -> float | None:
    if isinstance(v, float):
        return v
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, str)):
        try:
            return float(v)
        except (ValueError, OverflowError):
            return None
    return None


class Detector:
    """Divergence detector: ``findings = det.observe(state, step, values)``."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        candidates: list[Rule] = [
            NonFiniteRule(c.non_finite) if c.non_finite.enabled else None,
            SpikeRule("loss_spike", "loss spike", c.loss_spike) if c.loss_spike.enabled else None,
            SpikeRule("grad_spike", "gradient-norm spike", c.grad_spike) if c.grad_spike.enabled else None,
            NormGrowthRule(c.norm_growth) if c.norm_growth.enabled else None,
            LogitRule(c.logit_max) if c.logit_max.enabled else None,
            EntropyRule(c.entropy_collapse) if c.entropy_collapse.enabled else None,
        ]
        self.rules: list[Rule] = [r for r in candidates if r is not None]
        self._non_finite = next((r for r in self.rules if r.receives_non_finite), None)
        self._routes: dict[str, tuple[tuple[Rule, int | None], ...]] = {}

    def new_state(self) -> DetectorState:
        return DetectorState(rules={r.name: {} for r in self.rules})

    def _route(self, key: str) -> tuple[tuple[Rule, int | None], ...]:
        route = self._routes.get(key)
        if route is None:
            parts = match_layer_key(key)
            layer, site, stat = parts if parts is not None else (None, None, key)
            route = tuple(
                (r, layer)
                for r in self.rules
                if not r.receives_non_finite and r.accepts(key, layer, site, stat)
            )
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[key] = route
        return route

    def observe(self, state: DetectorState, step: int, values: Mapping[str, Any]) -> list[Finding]:
        """Fold one step's values into ``state``; return the rules firing at this step."""
        if state.last_step is not None and step <= state.last_step:
            return []
        state.last_step = step
        rules_state = state.rules
        cap = self.config.max_series_per_rule
        nf = self._non_finite
        nf_series = rules_state.setdefault(nf.name, {}) if nf is not None else None
        routes = self._routes
        isfinite = math.isfinite
        for key, raw in values.items():
            if not isinstance(key, str):
                continue
            # The collector hands over floats; anything else goes through the full conversion.
            v = raw if raw.__class__ is float else _as_float(raw)
            if v is None:
                continue
            finite = isfinite(v)
            if nf is not None:
                s = nf_series.get(key)
                if not finite:
                    if s is None and len(nf_series) < cap:
                        s = nf_series[key] = nf.new_series(key, None)
                    if s is not None:
                        nf.update(s, step, v)
                elif s is not None:
                    del nf_series[key]  # recovered: only non-finite series are kept
            if not finite:
                continue
            route = routes.get(key)
            if route is None:
                route = self._route(key)
            for rule, layer in route:
                series = rules_state.get(rule.name)
                if series is None:
                    series = rules_state[rule.name] = {}
                s = series.get(key)
                if s is None:
                    if len(series) >= cap:
                        continue
                    s = series[key] = rule.new_series(key, layer)
                rule.update(s, step, v)
        c = self.config
        findings = []
        for rule in self.rules:
            f = rule.finding(rules_state.get(rule.name, {}), step, c.message_series, c.evidence_series)
            if f is not None:
                findings.append(f)
        return findings


def replay(
    det: Detector, points: Iterable[tuple[int, Mapping[str, Any]]]
) -> tuple[DetectorState, list[Finding]]:
    """Feed stored ``(step, values)`` pairs (in increasing step order) through a fresh state.

    Returns the final state and every Finding emitted along the way, in order: the same as
    calling ``observe`` step by step, so a collector without a snapshot rebuilds exactly the
    state it would have had, and ``bench/`` scores detection over recorded runs."""
    state = det.new_state()
    findings: list[Finding] = []
    for step, values in points:
        findings.extend(det.observe(state, step, values))
    return state, findings
