"""`stabmon.scoring` on plain runs: the benchmark's scoring works on anything named, recorded and
labelled, which is what lets ``stabmon backtest`` reuse it unchanged."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from stabmon.detect import Detector
from stabmon.scoring import first_alerts, first_findings, score, table


@dataclass
class _Run:
    name: str
    records: list = field(default_factory=list)
    diverged_at: int | None = None
    decided_at: int | None = None


def _records(n, nan_at=None, logit_at=None):
    out = []
    for s in range(n):
        v = {"loss": 3.0 - 0.001 * s, "layer.0.attn.logit_max": 10.0}
        if logit_at is not None and s >= logit_at:
            v["layer.0.attn.logit_max"] = 5000.0
        if s == nan_at:
            v["loss"] = math.nan
        out.append((s, v))
    return out


def test_first_findings_carry_the_evidence_and_stop_at_the_first_critical():
    ff = first_findings(Detector(), _records(60, logit_at=25))
    assert ff.critical is not None and ff.critical.step == 25 and ff.critical.rule == "logit_max"
    assert "5e3" in ff.critical.message or "5000" in ff.critical.message
    assert ff.first is not None and ff.first.step <= 25
    quiet = first_findings(Detector(), _records(60))
    assert quiet.first is None and quiet.critical is None


def test_any_object_with_name_records_and_label_is_scored():
    runs = [
        _Run("nan", _records(60, nan_at=30), diverged_at=30, decided_at=30),
        _Run("calm", _records(60)),
    ]
    fa = first_alerts(runs)
    assert fa.critical == {"nan": 30, "calm": None}
    s = score(runs, fa.critical)
    assert (s["recall"], s["false_alarms"], s["lead_median"]) == (1.0, 0, 0)
    assert "| defaults | 1/1 (100%) |" in table({"defaults": s})
    # An override that silences the rule that fired: the same run is now a miss.
    silenced = first_alerts(runs, {"non_finite.enabled": False, "loss_spike.enabled": False})
    assert score(runs, silenced.critical)["misses"] == ["nan"]
