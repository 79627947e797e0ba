"""Scoring corpus v2 (`bench.corpus_v2`): per-mechanism tables, the labels file, the CLI.

Per mechanism, over its treated runs and its matched stable controls:

- *before the decision step*: diverging runs whose first critical alert comes before the
  label's decision step (where a loss-based stop could fire), with the 95% Wilson lower bound;
- *alert <= start*: the alert comes at or before the start of the failure, the incident's (or
  data switch's) step when there is one, the onset otherwise (lead >= 0);
- the median lead from that start (an incident run's lead is <= 0 past the incident step: its
  size is the reaction time);
- critical false alarms on the matched **stable** controls, also per 50 such runs;
- transients apart (alerted / total): neither catches nor false alarms.

A treated run that ended stable (the incident was absorbed) is counted, not scored.

    .venv/bin/python bench/corpus_v2_score.py --preset tiny [--reuse] [--jobs 2] [--root out/corpus]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus_v2 import CONTROL, MECHANISMS, MIN_ONSET, build, grid  # noqa: E402
from bench.detection_metrics import Run, load_runs, ours, score  # noqa: E402
from stabmon.scoring import Steps, lead_reference, table, wilson_lower  # noqa: E402


def matched_controls(runs: Sequence[Run], mechanism: str) -> list[Run]:
    return [r for r in runs if r.mechanism == CONTROL and mechanism in r.control_of]


def mechanism_row(runs: Sequence[Run], mechanism: str, first: Steps) -> dict[str, Any]:
    """One mechanism's row (see the module docstring)."""
    treated = [r for r in runs if r.mechanism == mechanism]
    controls = matched_controls(runs, mechanism)
    stable = [r for r in controls if r.outcome == "stable"]
    pos = [r for r in treated if r.outcome == "diverged"]
    s = score([r for r in treated if r.outcome != "stable"] + stable, first)
    before = [r for r in pos if first.get(r.name) is not None and r.decided_at is not None
              and first[r.name] < r.decided_at]  # fmt: skip
    leads = [lead_reference(r) - first[r.name] for r in pos if first.get(r.name) is not None]
    return {
        "mechanism": mechanism,
        "runs": len(treated),
        "diverged": len(pos),
        "diverged_onset_ge_min": sum(r.diverged_at >= MIN_ONSET for r in pos),
        "absorbed": sum(r.outcome == "stable" for r in treated),
        "undetermined": sum(r.outcome == "undetermined" for r in treated),
        "before_decision": len(before),
        "before_decision_wilson95": wilson_lower(len(before), len(pos)),
        "alert_le_start": s["recall_n"],
        "lead_median": statistics.median(leads) if leads else None,
        "controls": len(controls),
        "controls_stable": len(stable),
        "false_alarms": s["false_alarms"],
        "false_alarms_per_50": 50 * s["false_alarms"] / len(stable) if stable else None,
        "transient": s["transient"],
        "transient_alerted": s["transient_alerted"],
    }


def mechanism_table(runs: Sequence[Run], first: Steps) -> list[dict[str, Any]]:
    present = [m for m in MECHANISMS if any(r.mechanism == m for r in runs)]
    return [mechanism_row(runs, m, first) for m in present]


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f}%)" if n else f"{k}/0"


def mechanism_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    out = (
        f"| mechanism | runs | diverged (onset >= {MIN_ONSET}) | before the decision step "
        "| 95% lower bound | alert <= onset/incident | lead median | critical false alarms "
        "(per 50 stable controls) | transients alerted | absorbed / undetermined |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        lb = r["before_decision_wilson95"]
        fa50 = r["false_alarms_per_50"]
        lead = "-" if r["lead_median"] is None else f"{r['lead_median']:g}"
        out += (
            f"| {r['mechanism']} | {r['runs']} | {r['diverged']} ({r['diverged_onset_ge_min']}) "
            f"| {_pct(r['before_decision'], r['diverged'])} | {'-' if lb is None else f'{100 * lb:.0f}%'} "
            f"| {_pct(r['alert_le_start'], r['diverged'])} "
            f"| {lead} "
            f"| {r['false_alarms']}/{r['controls_stable']} ({'-' if fa50 is None else f'{fa50:.1f}'}) "
            f"| {r['transient_alerted']}/{r['transient']} | {r['absorbed']} / {r['undetermined']} |\n"
        )
    return out


def lr_range_markdown(runs: Sequence[Run], first: Steps) -> str:
    """The LR-range grids (`bench.detection`), scored only on "before the decision step"."""
    pos = [r for r in runs if r.diverged]
    k = sum(first.get(r.name) is not None and r.decided_at is not None and first[r.name] < r.decided_at
            for r in pos)  # fmt: skip
    lb = wilson_lower(k, len(pos))
    bound = "-" if lb is None else f"{100 * lb:.0f}%"
    return (
        "| LR range test | diverged | before the decision step | 95% lower bound |\n|---|---|---|---|\n"
        f"| stabmon (defaults) | {len(pos)} | {_pct(k, len(pos))} | {bound} |\n"
    )


def labels(runs: Sequence[Run], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The labels, with the machine and torch version that produced the series."""
    keys = ("mechanism", "control_of", "incident_step", "outcome", "kind", "diverged_at", "decided_at")
    return {**manifest, "labels": {r.name: {k: getattr(r, k) for k in keys} for r in runs}}


def report(out: Path, lr_range: Sequence[Run] = ()) -> dict[str, Any]:
    """Score the runs under ``out``: write ``labels.json``, ``detection_v2.json`` and ``.md``."""
    from bench.detection import references

    runs = load_runs([out])
    if not runs:
        raise SystemExit(f"no finished runs under {out}; run without --reuse to build the corpus")
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    (out / "labels.json").write_text(json.dumps(labels(runs, manifest), indent=1))
    default = ours(runs)
    refs = references(runs)
    overall = {"stabmon (defaults)": score(runs, default.critical)}
    overall.update({name: score(runs, first) for name, first in refs.items()})
    rows = mechanism_table(runs, default.critical)
    result: dict[str, Any] = {
        "runs": len(runs),
        "diverged_onset_ge_min": sum(r.diverged and r.diverged_at >= MIN_ONSET for r in runs),
        "by_mechanism": rows,
        "overall": overall,
        "per_run": [
            {
                "name": r.name,
                "mechanism": r.mechanism,
                "incident_step": r.incident_step,
                "outcome": r.outcome,
                "kind": r.kind,
                "onset": r.diverged_at,
                "decided_at": r.decided_at,
                "critical": default.critical[r.name],
                "rule": default.critical_rule[r.name],
            }
            for r in runs
        ],  # fmt: skip
    }
    md = "stabmon (defaults) by mechanism:\n\n" + mechanism_markdown(rows)
    md += "\nall v2 runs (matched controls and treated runs; transients apart):\n\n" + table(overall)
    if lr_range:
        md += "\n" + lr_range_markdown(lr_range, ours(lr_range).critical)
    (out / "detection_v2.json").write_text(json.dumps(result, indent=1))
    (out / "detection_v2.md").write_text(md)
    return {**result, "markdown": md}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="Corpus v2: build (resumably) and score per mechanism.")
    p.add_argument("--root", default="out/corpus", help="Corpus directory (git-ignored); v2 goes to ROOT/v2.")
    p.add_argument("--preset", default="small", help="Model size: tiny or small.")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="Score the runs already there; train nothing.")
    p.add_argument("--seeds", type=int, nargs="*", help="Only these seeds (default: the preset's).")
    p.add_argument("--mechanisms", nargs="*", choices=MECHANISMS, help="Only these (and their controls).")
    args = p.parse_args(argv)
    out = Path(args.root) / "v2" / args.preset
    if not args.reuse:
        t0 = time.perf_counter()
        cells = grid(args.preset, args.seeds, args.mechanisms)
        build(cells, out, args.preset, args.jobs)
        print(f"{out}: {len(cells)} runs, built in {time.perf_counter() - t0:.0f}s", flush=True)
    lr_range = sorted((Path(args.root) / args.preset).glob("*/runs"))
    result = report(out, load_runs(d.parent for d in lr_range) if lr_range else ())
    print(result["markdown"])
    return result


if __name__ == "__main__":
    main()
