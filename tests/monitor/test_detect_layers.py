"""Detector settings in layers (collector < project < run): precedence, canonical form, errors
that name the layer, and checks that span layers."""

from __future__ import annotations

import pytest

from stabmon.detect import DetectorConfig
from stabmon.detect.layers import (
    LayerError,
    canonical,
    dotted,
    merge,
    resolve,
    run_settings,
    sources,
    without,
)

DEFAULTS = DetectorConfig()


def test_each_key_comes_from_the_highest_layer_that_sets_it():
    layers, cfg = resolve(
        {
            "collector": {"loss_spike": {"z_warning": 7, "z_critical": 20}, "message_series": 4},
            "project": {"loss_spike.z_warning": 9, "entropy_collapse.max_severity": "warning"},
            "run": {"loss_spike": {"z_warning": 10}, "message_series": 2},
        }
    )
    assert cfg.loss_spike.z_warning == 10.0  # run over project over collector
    assert cfg.loss_spike.z_critical == 20.0  # the collector's, untouched above it
    assert cfg.entropy_collapse.max_severity == "warning"  # the project's
    assert cfg.message_series == 2
    assert cfg.loss_spike.window == DEFAULTS.loss_spike.window  # built-in, set by no layer
    assert sources(layers) == {
        "entropy_collapse.max_severity": "project",
        "loss_spike.z_critical": "collector",
        "loss_spike.z_warning": "run",
        "message_series": "run",
    }


def test_no_layers_is_the_built_in_defaults():
    layers, cfg = resolve({})
    assert cfg == DEFAULTS and layers == {"collector": {}, "project": {}, "run": {}}
    assert sources(layers) == {}


def test_canonical_form_is_nested_validated_json():
    out = canonical(
        {
            "loss_spike.window": "60",
            "norm_growth": {"sites": ("mlp",)},
            "logit_max": {},
            "evidence_series": 3,
        },
        "project",
    )
    assert out == {"loss_spike": {"window": 60}, "norm_growth": {"sites": ["mlp"]}, "evidence_series": 3}
    assert canonical(out, "project") == out  # stable: stored layers re-read the same
    assert dotted(out) == {"loss_spike.window": 60, "norm_growth.sites": ["mlp"], "evidence_series": 3}


@pytest.mark.parametrize(
    ("layer", "overrides", "fragments"),
    [
        ("collector", {"loss_spikes": {}}, ["collector-wide settings (STABMON_DETECTOR)", "'loss_spikes'"]),
        ("project", {"logit_max.critcal": 1}, ["project settings", "unknown field 'critcal'", "'logit_max'"]),
        (
            "run",
            {"loss_spike": {"window": 2}},
            ["run's config.detector", "loss_spike.window", "greater than"],
        ),
        ("project", {"logit_max.critical": float("inf")}, ["logit_max.critical must be a finite number"]),
        ("project", {"grad_spike.max_severity": "page"}, ["grad_spike.max_severity"]),
        ("run", "loud", ["run's config.detector", "must be a mapping"]),
    ],
)
def test_errors_name_the_layer_and_the_key(layer, overrides, fragments):
    with pytest.raises(LayerError) as exc:
        canonical(overrides, layer)
    assert exc.value.layer == layer
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_a_threshold_pair_may_be_split_between_layers():
    # 100 is below the built-in warning (300) but above the collector's (50): valid together.
    layers, cfg = resolve({"collector": {"logit_max.warning": 50}, "project": {"logit_max.critical": 100}})
    assert (cfg.logit_max.warning, cfg.logit_max.critical) == (50.0, 100.0)
    assert layers["project"] == {"logit_max": {"critical": 100.0}}


def test_a_layer_that_clashes_with_the_ones_beneath_is_refused_naming_both():
    collector = {"loss_spike": {"z_warning": 20, "z_critical": 30}}
    with pytest.raises(LayerError) as exc:
        resolve({"collector": collector, "project": {"loss_spike.z_critical": 15}})
    assert exc.value.layer == "project"
    assert "invalid together with the collector-wide settings" in str(exc.value)
    assert "critical threshold 15.0 is below the warning threshold 20.0" in str(exc.value)
    with pytest.raises(LayerError) as exc:
        resolve(
            {"collector": collector, "project": {"message_series": 5}, "run": {"loss_spike.z_critical": 15}}
        )
    assert exc.value.layer == "run"
    assert "collector-wide settings (STABMON_DETECTOR) and the project settings" in str(exc.value)


def test_unknown_layer_names_are_refused():
    with pytest.raises(ValueError, match="unknown detector layers"):
        resolve({"team": {}})


def test_merge_is_field_by_field_and_leaves_its_inputs_alone():
    low = {"loss_spike": {"z_warning": 7.0, "window": 60}}
    high = {"loss_spike": {"z_warning": 9.0}, "message_series": 2}
    assert merge(low, high) == {"loss_spike": {"z_warning": 9.0, "window": 60}, "message_series": 2}
    assert low == {"loss_spike": {"z_warning": 7.0, "window": 60}}


def test_without_drops_a_field_a_rule_or_a_top_level_key_and_refuses_typos():
    layer = {
        "loss_spike": {"z_warning": 7.0, "window": 60},
        "logit_max": {"warning": 50.0},
        "message_series": 2,
    }
    assert without(layer, "loss_spike.window") == {
        "loss_spike": {"z_warning": 7.0},
        "logit_max": {"warning": 50.0},
        "message_series": 2,
    }
    assert without(layer, "logit_max.warning") == {"loss_spike": layer["loss_spike"], "message_series": 2}
    assert without(layer, "loss_spike") == {"logit_max": {"warning": 50.0}, "message_series": 2}
    assert without(layer, "message_series") == {
        "loss_spike": layer["loss_spike"],
        "logit_max": layer["logit_max"],
    }
    assert without(layer, "entropy_collapse.sustain") == layer  # known but not set: nothing to drop
    assert layer["loss_spike"] == {"z_warning": 7.0, "window": 60}  # the input is not changed
    with pytest.raises(ValueError, match="unknown field 'zwarn'"):
        without(layer, "loss_spike.zwarn")
    with pytest.raises(ValueError, match="unknown detector override 'loss'"):
        without(layer, "loss")
    with pytest.raises(ValueError, match="'message_series' is not a detector rule"):
        without(layer, "message_series.x")


def test_run_settings_merges_the_saved_layers_under_the_run():
    config = {"lr": 0.1, "detector": {"loss_spike.z_warning": 10}}
    # Runs from before layers: judged by their own overrides alone.
    assert run_settings(None, config).config == DetectorConfig.from_overrides(config["detector"])
    assert run_settings({"collector": {}, "project": {}}, config).config == run_settings(None, config).config
    saved = {
        "collector": {"loss_spike": {"z_warning": 7.0, "z_critical": 20.0}},
        "project": {"message_series": 2},
    }
    settings = run_settings(saved, config)
    assert settings.config == DetectorConfig.from_overrides(
        {"loss_spike": {"z_warning": 10, "z_critical": 20.0}, "message_series": 2}
    )
    assert settings.config == resolve({**saved, "run": config["detector"]})[1]
    assert settings.sources["loss_spike.z_warning"] == "run"
    assert settings.sources["loss_spike.z_critical"] == "collector"
    assert config["detector"] == {"loss_spike.z_warning": 10}  # the input is not changed
    bad = run_settings(saved, {"detector": {"loss_spike.z_warning": "x"}})
    assert bad.config is None and "config.detector" in bad.problem
