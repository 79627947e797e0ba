"""The attention-logit thresholds the run page draws: the divergence detector's own settings
for the run (its defaults updated by the collector-wide, project and run overrides), resolved
by :func:`stabmon.detect.layers.run_settings` as ingest resolves them rather than copied, so
the lines on the plot are the levels at which the collector really alerts.

Also the level past which Wortsman et al. (2023) saw every run diverge (~1e4), drawn as a
reference line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stabmon.detect import DetectorConfig
from stabmon.detect.layers import run_settings

log = logging.getLogger(__name__)

WORTSMAN_DIVERGENCE_LOGIT = 1e4
"""Attention-logit magnitude past which every run of Wortsman et al. (2023) diverged."""


def thresholds_for(
    run_config: Mapping[str, Any] | None, layers: Mapping[str, Any] | None = None
) -> dict[str, dict[str, float | None]]:
    """``{"logit_max": {"warning", "critical"}, "logit_bound": {...}}`` for a run's config and
    the collector-wide and project overrides saved with it (``layers``, see
    :mod:`monitor.detector_settings`). A disabled rule draws no lines; an invalid override falls
    back to the defaults (the collector rejects such a run's detector config too, and the page
    must still open)."""
    settings = run_settings(layers, run_config or {})
    cfg = settings.config
    if cfg is None:
        log.warning("run detector overrides are invalid, drawing default thresholds: %s", settings.problem)
        cfg = DetectorConfig()
    rule = cfg.logit_max
    if not rule.enabled:
        return {"logit_max": {}, "logit_bound": {}}
    # A rule capped at warning never reports critical: do not draw a critical line.
    crit = rule.max_severity == "critical"
    return {
        "logit_max": {"warning": rule.warning, "critical": rule.critical if crit else None},
        "logit_bound": {"warning": rule.bound_warning, "critical": rule.bound_critical if crit else None},
    }
