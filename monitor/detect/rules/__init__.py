"""The detector's rules, one per file. Each turns per-series observations into levels with
hysteresis and folds them into at most one Finding per step (see :mod:`.base`)."""

from monitor.detect.rules.base import Rule
from monitor.detect.rules.entropy import EntropyRule
from monitor.detect.rules.logit import LogitRule
from monitor.detect.rules.non_finite import NonFiniteRule
from monitor.detect.rules.norm_growth import NormGrowthRule
from monitor.detect.rules.spike import SpikeRule

__all__ = ["EntropyRule", "LogitRule", "NonFiniteRule", "NormGrowthRule", "Rule", "SpikeRule"]
