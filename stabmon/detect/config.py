"""Detector configuration: one validated pydantic model per rule, grouped in :class:`DetectorConfig`.

Every threshold, window and severity cap is a field documented where it is declared. Overrides
come nested (``{"loss_spike": {"z_warning": 8}}``) or dotted (``{"loss_spike.z_warning": 8}``),
from the collector (``STABMON_DETECTOR``), the project and the run's ``config["detector"]``, in
that order of precedence (:mod:`stabmon.detect.layers`); :meth:`DetectorConfig.from_overrides`
rejects unknown rules or fields with a ValueError that lists what exists, so a typo never
silently leaves a default in place. The defaults are scale-free ratios, robust z-scores and absolute
attention-logit bounds from the literature, checked against real runs of the trainer (stable and
unstable variants and learning rates; the field notes say what each run showed), never numbers
fitted to a particular run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stabmon.wire import SITES


class RuleConfig(BaseModel):
    """Fields every rule has."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_severity: Literal["warning", "critical"] = "critical"
    """Cap on the severity this rule reports (e.g. ``"warning"`` to never page on it)."""
    clear_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    """Hysteresis: a level entered at threshold T holds until the score falls below
    ``T * clear_fraction`` (for drop-style rules, until it recovers past ``T * clear_fraction``)."""


def _check_pair(warning: float | None, critical: float | None, name: str) -> None:
    if warning is not None and critical is not None and critical < warning:
        raise ValueError(f"{name}: critical threshold {critical} is below the warning threshold {warning}")


class NormGrowthConfig(RuleConfig):
    """Output norms (``layer.{i}.{site}.{stat}``) growing step after step before divergence."""

    sites: tuple[str, ...] = tuple(s for s in SITES if s != "attn")
    stats: tuple[str, ...] = ("l2_mean", "l2_max")
    window_steps: int = Field(default=100, ge=1)
    """Growth is measured against the smallest value seen within this many steps."""
    window_points: int = Field(default=16, ge=2, le=256)
    """At most this many past observations are kept per series (sparse monitoring keeps fewer)."""
    window_min_points: int = Field(default=4, ge=1)
    """...but the window always keeps this many past observations, so sparse monitoring
    (every=50) still compares against a few earlier values."""
    sustain: int = Field(default=2, ge=1, le=32)
    """The current value is the minimum of the last ``sustain`` observations: a one-batch
    outlier does not fire."""
    growth_warning: float | None = Field(default=30.0, gt=1.0)
    """Warning when a norm grew this many times within ``window_steps``. 30, not 10: healthy
    normalised runs at high LR grow single norms 10-20x in 100 steps; 30 removed 3 of 13 warned
    stable runs on the 60-run `small` detection corpus and 2 of 49 on the 140-run `tiny` one, with
    the same diverging runs warned."""
    growth_critical: float | None = Field(default=100.0, gt=1.0)
    burn_in_steps: int = Field(default=100, ge=0)
    """Steps, counted from a series' first observation, before it is judged or used as a
    reference. The first steps of a healthy run move output norms away from their
    initialisation scale by orders of magnitude (output projections start small: FC2 norms
    went 0.14 -> 5e3 within 40 steps in a run that trained best); only growth after that
    transient predicts divergence. Early blow-ups are caught by the logit, entropy, loss and
    non-finite rules."""
    baseline_points: int = Field(default=5, ge=1, le=64)
    """The early baseline is the median of this many observations after the burn-in."""
    baseline_warning: float | None = Field(default=100.0, gt=1.0)
    """Warning when a norm reached this many times its early baseline (catches slow growth)."""
    baseline_critical: float | None = Field(default=1000.0, gt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> NormGrowthConfig:
        _check_pair(self.growth_warning, self.growth_critical, "norm_growth.growth")
        _check_pair(self.baseline_warning, self.baseline_critical, "norm_growth.baseline")
        if self.window_min_points > self.window_points:
            raise ValueError(
                f"norm_growth: window_min_points ({self.window_min_points}) exceeds "
                f"window_points ({self.window_points})"
            )
        return self


class LogitConfig(RuleConfig):
    """Attention-logit maxima against absolute bounds. Wortsman et al. (2023): every run whose
    attention logits passed ~1e4 diverged; Kimi K2's MuonClip caps them at 100."""

    warning: float | None = Field(default=300.0, gt=0.0)
    critical: float | None = Field(default=3000.0, gt=0.0)
    bound_warning: float | None = Field(default=3000.0, gt=0.0)
    """Thresholds for ``logit_bound`` (rotary models): an upper bound, so looser."""
    bound_critical: float | None = Field(default=30000.0, gt=0.0)
    sustain_warning: int = Field(default=2, ge=1)
    """Consecutive observations above the warning threshold before it fires."""
    sustain_critical: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LogitConfig:
        _check_pair(self.warning, self.critical, "logit_max")
        _check_pair(self.bound_warning, self.bound_critical, "logit_max.bound")
        return self


class EntropyConfig(RuleConfig):
    """Attention entropy (``layer.{i}.attn.entropy_mean``) collapsing towards 0."""

    burn_in: int = Field(default=0, ge=0)
    """Observations skipped before the baseline is taken. None by default: at initialisation
    attention is near-uniform, so its entropy is a natural reference (set by the context
    length), and unstable runs collapse within the first few steps (a baseline taken later
    would start inside the collapse). Calibration: healthy runs ended at most 3.4x below it,
    unstable ones 19x to 17,000x."""
    baseline_points: int = Field(default=3, ge=1, le=64)
    drop_warning: float | None = Field(default=10.0, gt=1.0)
    """Warning when the entropy fell to 1/drop_warning of its early baseline."""
    drop_critical: float | None = Field(default=50.0, gt=1.0)
    sustain: int = Field(default=2, ge=1, le=32)

    @model_validator(mode="after")
    def _ordered(self) -> EntropyConfig:
        _check_pair(self.drop_warning, self.drop_critical, "entropy_collapse.drop")
        return self


class SpikeConfig(RuleConfig):
    """A robust z-score (median/MAD over a rolling window) of one run-level series."""

    keys: tuple[str, ...] = ("loss",)
    window: int = Field(default=50, ge=4, le=1024)
    min_points: int = Field(default=8, ge=3)
    """No z-score until the window holds this many finite values."""
    z_warning: float | None = Field(default=6.0, gt=0.0)
    z_critical: float | None = Field(default=12.0, gt=0.0)
    rel_warning: float = Field(default=0.1, ge=0.0)
    """The value must also exceed the window median by this fraction of it (a z-score alone
    is meaningless on a very flat series)."""
    rel_critical: float = Field(default=0.5, ge=0.0)
    sigma_floor: float = Field(default=0.005, ge=0.0)
    """The robust sigma is at least this fraction of |median|."""
    sustain_warning: int = Field(default=1, ge=1)
    """A single spike warns..."""
    sustain_critical: int = Field(default=2, ge=1)
    """...but is critical only when the next observation is still up: healthy runs have
    isolated spikes that recover at once (a qkv_norm run at LR 0.1 jumped 3.3 -> 5.9 nats for
    one step and trained on normally)."""

    @model_validator(mode="after")
    def _ordered(self) -> SpikeConfig:
        _check_pair(self.z_warning, self.z_critical, "z")
        if self.min_points > self.window:
            raise ValueError(f"min_points ({self.min_points}) exceeds window ({self.window})")
        return self


class GradSpikeConfig(SpikeConfig):
    """Gradient-norm spikes: noisier than the loss, so the bars are higher."""

    keys: tuple[str, ...] = ("grad_norm",)
    z_warning: float | None = Field(default=10.0, gt=0.0)
    z_critical: float | None = Field(default=25.0, gt=0.0)
    rel_warning: float = Field(default=4.0, ge=0.0)
    """At least 5x the rolling median: healthy runs show isolated 2-4x bumps."""
    rel_critical: float = Field(default=10.0, ge=0.0)
    sigma_floor: float = Field(default=0.05, ge=0.0)


class NonFiniteConfig(RuleConfig):
    """NaN or infinity in any series."""

    critical_patterns: tuple[str, ...] = ("loss", "val_loss", "grad_norm", "layer.*")
    """fnmatch patterns of keys whose non-finite value is critical; other keys (user extras)
    only warn."""


RULE_FIELDS = ("non_finite", "loss_spike", "grad_spike", "norm_growth", "logit_max", "entropy_collapse")


class DetectorConfig(BaseModel):
    """All rules' settings. Build from a run's overrides with :meth:`from_overrides`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    non_finite: NonFiniteConfig = NonFiniteConfig()
    loss_spike: SpikeConfig = SpikeConfig()
    grad_spike: GradSpikeConfig = GradSpikeConfig()
    norm_growth: NormGrowthConfig = NormGrowthConfig()
    logit_max: LogitConfig = LogitConfig()
    entropy_collapse: EntropyConfig = EntropyConfig()
    message_series: int = Field(default=3, ge=1, le=50)
    """How many of the worst series a Finding's message names."""
    evidence_series: int = Field(default=10, ge=1, le=500)
    """How many of the worst series a Finding's evidence lists."""
    max_series_per_rule: int = Field(default=4096, ge=1)
    """A rule tracks at most this many series per run (new keys beyond it are ignored), so a
    client inventing keys cannot grow the state without bound."""

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None) -> DetectorConfig:
        """Defaults updated by ``overrides`` (nested or dotted keys). Unknown rules or fields,
        or invalid values, raise ValueError naming the offending key."""
        nested = nest_overrides(overrides)
        try:
            return cls.model_validate(nested)
        except ValidationError as e:
            # "rule.field: message" per problem, without pydantic's echo of the input and its
            # documentation links: this text goes to API answers and the CLI.
            raise ValueError(f"invalid detector override: {'; '.join(map(_problem, e.errors()))}") from None


def _problem(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    # The rules' own checks already name the rule ("logit_max: critical threshold ...").
    return msg if not loc or msg.startswith((f"{loc}:", f"{loc}.")) else f"{loc}: {msg}"


def nest_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overrides`` (nested or dotted keys) in nested form: ``{"loss_spike": {"z_warning": 8}}``.
    Checks the keys only (unknown rules or fields raise ValueError listing what exists); the
    values are checked by :meth:`DetectorConfig.from_overrides`."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"detector overrides must be a mapping, got {type(overrides).__name__}")
    fields = DetectorConfig.model_fields
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ValueError(f"detector override keys must be strings, got {key!r}")
        head, _, field = key.partition(".")
        if head not in fields:
            raise ValueError(f"unknown detector override {key!r}: known keys are {', '.join(fields)}")
        if field:
            nested.setdefault(head, {})
            if not isinstance(nested[head], dict):
                raise ValueError(f"detector override {key!r} conflicts with {head!r}")
            nested[head][field] = value
        elif isinstance(value, Mapping):
            nested.setdefault(head, {})
            if not isinstance(nested[head], dict):
                raise ValueError(f"detector override {head!r} given twice")
            nested[head].update(value)
        else:
            nested[head] = value
    for head, value in nested.items():
        if head in RULE_FIELDS:
            if not isinstance(value, dict):
                raise ValueError(f"detector override {head!r} must be a mapping of its fields")
            known = fields[head].annotation.model_fields
            for field in value:
                if field not in known:
                    raise ValueError(
                        f"unknown field {field!r} for detector rule {head!r}: "
                        f"known fields are {', '.join(known)}"
                    )
    return nested
