"""Detector configuration: per-run overrides, nested or dotted, validated with clear errors."""

from __future__ import annotations

import pytest

from stabmon.detect import DetectorConfig


def test_defaults_and_empty_overrides():
    assert DetectorConfig.from_overrides(None) == DetectorConfig() == DetectorConfig.from_overrides({})


def test_nested_and_dotted_overrides_merge():
    cfg = DetectorConfig.from_overrides(
        {
            "loss_spike": {"z_warning": 8.0},
            "loss_spike.window": 100,
            "logit_max.critical": 1e4,
            "message_series": 5,
        }
    )
    assert cfg.loss_spike.z_warning == 8.0 and cfg.loss_spike.window == 100
    assert cfg.loss_spike.z_critical == DetectorConfig().loss_spike.z_critical
    assert cfg.logit_max.critical == 1e4 and cfg.message_series == 5


def test_a_threshold_can_be_disabled_with_none():
    cfg = DetectorConfig.from_overrides(
        {"norm_growth": {"baseline_warning": None, "baseline_critical": None}}
    )
    assert cfg.norm_growth.baseline_warning is None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"loss_spikes": {}}, "unknown detector override 'loss_spikes': known keys are non_finite"),
        ({"loss_spike.zwarn": 3}, "unknown field 'zwarn' for detector rule 'loss_spike': known fields are"),
        ({"logit_max": {"critcal": 1}}, "unknown field 'critcal' for detector rule 'logit_max'"),
        ({"logit_max": 5}, "'logit_max' must be a mapping"),
        ({"logit_max": {"warning": 500, "critical": 100}}, "critical threshold 100.0 is below the warning"),
        ({"loss_spike": {"z_warning": -1}}, "greater than 0"),
        ({"loss_spike": {"min_points": 20, "window": 10}}, "min_points (20) exceeds window (10)"),
        ({"grad_spike.max_severity": "page"}, "max_severity"),
        ({"norm_growth.growth_warning": 1.0}, "greater than 1"),
        ([("a", 1)], "must be a mapping"),
        ({3: 1}, "keys must be strings"),
    ],
)
def test_bad_overrides_raise_value_error_naming_the_problem(overrides, fragment):
    with pytest.raises(ValueError) as exc:
        DetectorConfig.from_overrides(overrides)
    assert fragment in str(exc.value)


def test_config_is_immutable():
    cfg = DetectorConfig()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its ValidationError subclass
        cfg.loss_spike.window = 3  # type: ignore[misc]
