"""What the detector emits: one :class:`Finding` per rule that fires at a step.

A Finding is a frozen value object, JSON-able through :meth:`Finding.to_dict`: the
collector turns the first Finding of a (run, rule) into an alert, updates the alert while
the rule keeps firing, and resolves it at the first step the rule is absent. Severity is
ordered (``warning`` < ``critical``) and rules work with the integer levels below, so the
helpers that map between the two and format numbers for messages live here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from stabmon.wire import SEVERITY_RANK, Severity

# Internal severity levels: 0 = quiet, then the wire's severity order (1 = warning, 2 = critical).
QUIET, WARNING, CRITICAL = 0, SEVERITY_RANK["warning"], SEVERITY_RANK["critical"]
LEVEL_NAMES: dict[int, Severity] = {WARNING: "warning", CRITICAL: "critical"}
SEVERITY_LEVELS: dict[str, int] = SEVERITY_RANK


@dataclass(frozen=True)
class Finding:
    """A rule firing at one step.

    ``message`` is the human-readable evidence ("layer.3.fc2.l2_mean grew 40x in 25 steps");
    ``evidence`` holds the same facts as JSON-able data (non-finite numbers encoded as
    "nan"/"inf"/"-inf", like on the wire).
    """

    rule: str
    severity: Severity
    step: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "step": self.step,
            "message": self.message,
            "evidence": self.evidence,
        }


def fmt(x: float) -> str:
    """A number for a message: three significant digits, compact exponent (1.2e4)."""
    if not math.isfinite(x):
        return str(x)
    text = f"{x:.3g}"
    if "e" in text:
        mant, _, exp = text.partition("e")
        text = f"{mant}e{int(exp)}"  # 1.2e4, not 1.2e+04
    return text
