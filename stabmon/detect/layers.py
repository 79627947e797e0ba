"""Detector settings in layers: built-in defaults < collector-wide < project < run.

Each layer is a partial set of overrides in the form :meth:`DetectorConfig.from_overrides`
takes (nested or dotted keys): ``collector`` comes from ``STABMON_DETECTOR``, ``project`` is
stored with the project, ``run`` is the run's own ``config["detector"]``. A key set in a higher
layer replaces the same key below it, field by field (a project setting
``loss_spike.z_warning`` keeps the collector's ``loss_spike.z_critical``).

A layer is checked on its own (unknown rules or fields, bad values) and together with the
layers beneath it, since some checks span fields (a critical threshold below the warning one)
that different layers may set. Errors are :class:`LayerError`, a ValueError that names the
layer. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stabmon.detect.config import RULE_FIELDS, DetectorConfig, nest_overrides

LAYERS = ("collector", "project", "run")
"""Lowest first: a key set in a later layer wins."""

LAYER_NAMES = {
    "collector": "collector-wide settings (STABMON_DETECTOR)",
    "project": "project settings",
    "run": "run's config.detector",
}


class LayerError(ValueError):
    """A layer's overrides are invalid, alone or over the layers beneath it."""

    def __init__(self, layer: str, message: str) -> None:
        super().__init__(message)
        self.layer = layer


def canonical(
    overrides: Mapping[str, Any] | None, layer: str, below: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """``overrides`` as one layer stores them: nested, without empty rule sections, each value
    as the validated config holds it (``"8"`` for a float field becomes ``8.0``), so stored
    layers are plain JSON. Raises :class:`LayerError` when a key is unknown or a value invalid
    on top of the ``below`` layers (name -> canonical layer, lowest first). Checks that span
    fields see the layers together: a project may set ``logit_max.critical`` to 100 where the
    collector-wide warning is 50, although 100 is below the built-in warning."""
    below = {name: b for name, b in (below or {}).items() if b}
    try:
        nested = {k: v for k, v in nest_overrides(overrides).items() if v != {}}
    except ValueError as e:
        raise LayerError(layer, f"{LAYER_NAMES[layer]}: {e}") from None
    try:
        config = DetectorConfig.from_overrides(merge(*below.values(), nested))
    except ValueError as e:
        raise LayerError(layer, _problem(layer, nested, below, e)) from None
    dump = config.model_dump(mode="json")
    out: dict[str, Any] = {}
    for head, value in nested.items():
        if head in RULE_FIELDS:
            rule = getattr(config, head)
            for field in value:
                _finite(layer, f"{head}.{field}", getattr(rule, field))
            out[head] = {field: dump[head][field] for field in value}
        else:
            _finite(layer, head, getattr(config, head))
            out[head] = dump[head]
    return out


def _problem(layer: str, nested: dict[str, Any], below: Mapping[str, Any], error: ValueError) -> str:
    """The error message, saying so when the layer is valid on its own but not together with
    the layers beneath it (a threshold pair split between two layers)."""
    if below:
        try:
            DetectorConfig.from_overrides(nested)
        except ValueError:
            pass
        else:
            beneath = " and the ".join(LAYER_NAMES[name] for name in below)
            return f"{LAYER_NAMES[layer]}: invalid together with the {beneath}: {error}"
    return f"{LAYER_NAMES[layer]}: {error}"


def _finite(layer: str, key: str, value: Any) -> None:
    # Stored layers are JSON, which has no infinity (PostgreSQL's json type refuses it), and
    # None already means "no threshold".
    if isinstance(value, float) and not math.isfinite(value):
        raise LayerError(
            layer, f"{LAYER_NAMES[layer]}: {key} must be a finite number (null disables a threshold)"
        )


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Nested layers merged, lowest first: rule sections field by field, other keys whole."""
    out: dict[str, Any] = {}
    for layer in layers:
        for head, value in layer.items():
            if head in RULE_FIELDS and isinstance(value, Mapping):
                out[head] = {**out.get(head, {}), **value}
            else:
                out[head] = value
    return out


def resolve(layers: Mapping[str, Mapping[str, Any] | None]) -> tuple[dict[str, dict], DetectorConfig]:
    """Every layer in canonical form, each checked over the ones beneath it, and the resulting
    config. ``layers`` maps names of :data:`LAYERS` to overrides (missing or None: empty)."""
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown detector layers {sorted(unknown)}: known are {', '.join(LAYERS)}")
    done: dict[str, dict] = {}
    for name in LAYERS:
        done[name] = canonical(layers.get(name), name, below=dict(done))
    return done, DetectorConfig.from_overrides(merge(*done.values()))


def dotted(nested: Mapping[str, Any]) -> dict[str, Any]:
    """``{"loss_spike": {"z_warning": 8}}`` -> ``{"loss_spike.z_warning": 8}``."""
    out: dict[str, Any] = {}
    for head, value in nested.items():
        if head in RULE_FIELDS and isinstance(value, Mapping):
            out.update({f"{head}.{field}": v for field, v in value.items()})
        else:
            out[head] = value
    return out


def sources(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """For each overridden key (dotted), the layer whose value holds: the highest setting it."""
    out: dict[str, str] = {}
    for name in LAYERS:
        for key in dotted(layers.get(name) or {}):
            out[key] = name
    return dict(sorted(out.items()))


def without(nested: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``nested`` less ``key``: a dotted ``rule.field``, a whole rule, or a top-level field.
    Raises ValueError for a key no layer could hold (a typo must not pass as done)."""
    head, _, field = key.partition(".")
    if field and head not in RULE_FIELDS:
        raise ValueError(f"{head!r} is not a detector rule: it has no field {field!r}")
    nest_overrides({key: {} if head in RULE_FIELDS and not field else None})  # checks the names
    out = {h: dict(v) if isinstance(v, Mapping) else v for h, v in nested.items()}
    if field:
        section = out.get(head)
        if isinstance(section, dict):
            section.pop(field, None)
            if not section:
                del out[head]
    else:
        out.pop(head, None)
    return out


def run_layers(stored: Mapping[str, Any] | None, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's layers: the collector-wide and project ones saved when it was registered
    (``stored``; None for runs registered before there were layers) and its own overrides."""
    return {**(stored or {}), "run": run_config.get("detector") or {}}


@dataclass(frozen=True)
class LayeredSettings:
    """Overrides by layer (canonical, nested), which layer each overridden key comes from, and
    the resulting config. ``config`` is None, and ``problem`` says why, when the layers no longer
    fit together (a collector-wide setting changed under a project's) or a run's own overrides
    are invalid (registered before registration checked them): such a run is not judged."""

    layers: dict[str, dict[str, Any]]
    sources: dict[str, str] = field(default_factory=dict)
    config: DetectorConfig | None = None
    problem: str | None = None


def layered(layers: Mapping[str, Mapping[str, Any] | None]) -> LayeredSettings:
    """``layers`` resolved; the answer shows the layers given (a project's has no run layer)."""
    try:
        done, config = resolve(layers)
        done = {name: layer for name, layer in done.items() if name in layers}
    except LayerError as e:
        shown = {name: _as_shown(name, layer) for name, layer in layers.items()}
        return LayeredSettings(shown, sources(shown), None, str(e))
    return LayeredSettings(done, sources(done), config)


def run_settings(stored: Mapping[str, Any] | None, run_config: Mapping[str, Any]) -> LayeredSettings:
    """What a run is judged by: the layers saved at its registration (``stored``) and its own
    ``config.detector``. The one resolver: the collector's ingest, ``GET /runs/{id}/detector``
    and the dashboard's threshold lines all ask this."""
    return layered(run_layers(stored, run_config))


def _as_shown(name: str, layer: Any) -> dict[str, Any]:
    """A layer as it can be shown when the layers do not resolve: canonical if it is valid
    alone, else as stored (a mapping), else nothing (the problem names it)."""
    if not isinstance(layer, Mapping):
        return {}
    try:
        return canonical(layer, name)
    except LayerError:
        return dict(layer)
