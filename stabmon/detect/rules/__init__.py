"""The detector's rules, one per file. Each turns per-series observations into levels with
hysteresis and folds them into at most one Finding per step (see :mod:`.base`)."""

from stabmon.detect.rules.base import Rule
from stabmon.detect.rules.entropy import EntropyRule
from stabmon.detect.rules.logit import LogitRule
from stabmon.detect.rules.non_finite import NonFiniteRule
from stabmon.detect.rules.norm_growth import NormGrowthRule
from stabmon.detect.rules.spike import SpikeRule

__all__ = ["EntropyRule", "LogitRule", "NonFiniteRule", "NormGrowthRule", "Rule", "SpikeRule"]
