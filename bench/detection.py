"""The detection benchmark: stabmon's detector vs two published loss-spike rules on real runs.

Builds (or, with ``--reuse``, only reads) a labelled corpus of training runs with the sweep
library (`trainer_hooks.lab.sweep`): all five norm variants x a learning-rate grid from stable to
divergent x 2 seeds, with warmup (the ``stabmon sweep`` grid), without, and with a slow ramp
(warmup over half the run, so that the high LRs cross the stability edge mid-run rather than in
the first steps); every run's per-step records in JSONL under ``out/corpus/{preset}/``
(git-ignored; this script re-creates it, resumably).
Labels come from `stabmon.divergence.label_run` on the full loss history; the detectors see
only the prefix, one step at a time (`bench.detection_metrics`). It then

1. scores the detector's defaults, its warnings, and the two reference rules
   (`bench.reference_detectors`: LLM Foundry's KillLossSpike, OLMo-core's 6-sigma spike score,
   each with its published window and with a window scaled to these short runs);
2. calibrates the detector's key thresholds on seed 0 (grid search, one rule at a time, combined
   exactly) and reports the chosen thresholds on seed 1, and the reverse;
3. replays ``--early-stop`` offline on the warmup grid: how many steps a stop at the first
   critical finding saves, and whether any conclusion (a variant's maximum stable LR) changes;
4. writes ``detection.json`` and ``detection.md`` (tables) next to the corpus and the timeline
   plot to ``--img``.

    .venv/bin/python bench/detection.py [--reuse] [--preset small --steps 300] [--jobs 2]
        [--root out/corpus] [--img docs/img]
    .venv/bin/python bench/detection.py --corpus v2 [--preset tiny] [--jobs 2] [--reuse]  # not
        these "LR range test" grids: corpus v2 (`bench.corpus_v2`), mechanisms with controls
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench.*` and the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.detection_metrics import (  # noqa: E402
    FirstAlerts,
    Run,
    combine,
    ended_on_plateau,
    load_runs,
    ours,
    per_rule_first,
    reference,
    score,
)
from bench.reference_detectors import KillLossSpike, SpikeScore  # noqa: E402
from stabmon.scoring import table  # noqa: E402 - the one recall / false-alarm / lead table

GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    # 200-step runs: the `stabmon sweep` grid plus 0.5 and 0.7, which resolve the top of the
    # stable range; no warmup at three LRs; a slow ramp over half the run at the high LRs.
    "tiny": {
        "warmup": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 0.5, 0.7, 1.0),
        "nowarmup": (3e-2, 1e-1, 3e-1),
        "ramp": (1e-1, 3e-1, 1.0),
        "slowramp": (1e-1, 3e-1, 1.0),
    },
    # 300-step runs of the 472k-parameter model (60 runs). Every variant blows up within the first
    # warmup steps at LR 1 and without warmup at 0.3 (nothing precedes those), so the grid spends
    # its runs where the LR crosses each variant's stability edge after the first steps: the slow
    # ramp to LR 1 passes 0.1 at step 15, 0.3 at step 45 and 0.5-0.7 at steps 75-105.
    "small": {
        "warmup": (1e-2, 1e-1, 3e-1, 0.5),
        "nowarmup": (1e-1,),
        "ramp": (1.0,),
        "slowramp": (3e-1, 1.0),
    },
}
"""Learning rates per corpus preset and grid: warmup over 10% of the run, none, half the run, or
the slow ramp below."""
SLOW_RAMP = (600, 500)
"""(steps, warmup) of the ``slowramp`` grid, whatever ``--steps`` is: the LR climbs for 500 steps
(to LR 1 it passes 0.3 at step 150 and 0.6 at step 300), so each variant crosses its stability
edge after a few hundred steps of ordinary training. That is the regime the paper's precursors
are about (norms and logits growing "step after step" before the loss goes), and the closest
these CPUs get to a divergence late in a long run."""
LATE_STEP = 20
SEEDS = (0, 1)

# Key thresholds searched per rule (the others keep their defaults). Warning thresholds follow
# the critical one down where needed so the pair stays ordered.
GRID: dict[str, list[dict[str, Any]]] = {
    "non_finite": [{}],
    "logit_max": [{"critical": c, "warning": min(300.0, c)} for c in (300.0, 1000.0, 3000.0, 10000.0)],
    "entropy_collapse": [
        {"drop_critical": c, "drop_warning": min(10.0, c)} for c in (20.0, 50.0, 100.0, 300.0)
    ],
    "norm_growth": [
        {"burn_in_steps": b, "growth_critical": g, "growth_warning": min(30.0, g)}
        for b in (30, 100)
        for g in (30.0, 100.0, 300.0)
    ],
    "loss_spike": [
        {"z_critical": z, "sustain_critical": s, "rel_critical": rel, "rel_warning": min(0.1, rel)}
        for z in (8.0, 12.0, 20.0)
        for s in (2, 3)
        for rel in (0.2, 0.5)
    ],
    "grad_spike": [{"z_critical": z} for z in (25.0, 50.0)],
}


def corpus_configs(root: str | Path, preset: str, steps: int, jobs: int = 2):
    """The corpus's grids under ``root/preset``: with warmup (10% of the run: the ``stabmon
    sweep`` grid), without, with a ramp (warmup over half the run) at the high LRs, and the
    longer `SLOW_RAMP` runs."""
    from trainer_hooks.lab.sweep import SweepConfig

    base = Path(root) / preset
    grid = GRIDS.get(preset, GRIDS["small"])
    shapes = {
        "warmup": (steps, steps // 10),
        "nowarmup": (steps, 0),
        "ramp": (steps, steps // 2),
        "slowramp": SLOW_RAMP,
    }
    common = dict(preset=preset, seeds=SEEDS, jobs=jobs, plots=False)
    return [
        SweepConfig(lrs=grid[name], steps=n, warmups=(warmup,), out=str(base / name), **common)
        for name, (n, warmup) in shapes.items()
        if name in grid
    ]


def build_corpus(root: str | Path, preset: str, steps: int, jobs: int) -> None:
    from trainer_hooks.lab.sweep import run_sweep

    for cfg in corpus_configs(root, preset, steps, jobs):
        t0 = time.perf_counter()
        run_sweep(
            cfg, on_done=lambda r, i, n: print(f"  [{i}/{n}] {r['name']} ({r['wall_s']:.0f}s)", flush=True)
        )
        print(f"{cfg.out}: done in {time.perf_counter() - t0:.0f}s", flush=True)


def references(runs: Sequence[Run]) -> dict[str, dict[str, int | None]]:
    """First alerts of the reference rules, with their published windows and scaled ones."""
    return {
        "foundry (window 100)": reference(runs, lambda r: KillLossSpike(total_steps=r.steps)),
        "foundry (window 20)": reference(runs, lambda r: KillLossSpike(window=20)),
        "olmo 6-sigma (window 128)": reference(runs, lambda r: SpikeScore()),
        "olmo 6-sigma (window 20)": reference(runs, lambda r: SpikeScore(window=20)),
    }


def rule_options(runs: Sequence[Run]) -> dict[str, list[tuple[dict[str, Any], FirstAlerts]]]:
    """Every grid option of every rule, evaluated alone over ``runs``."""
    return {rule: [(opt, per_rule_first(runs, rule, opt)) for opt in opts] for rule, opts in GRID.items()}


def _restrict(fa: FirstAlerts, names: set[str]) -> FirstAlerts:
    keep = lambda d: {k: v for k, v in d.items() if k in names}  # noqa: E731
    return FirstAlerts(keep(fa.critical), keep(fa.warning), keep(fa.critical_rule))


def calibrate(
    runs: Sequence[Run], options: dict[str, list[tuple[dict[str, Any], FirstAlerts]]]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The grid combination that has the fewest false alarms on ``runs``, then the highest recall,
    then the longest median lead; ties go to the combination closest to the defaults."""
    names = {r.name for r in runs}
    rules = list(options)
    defaults = {rule: _default_index(rule) for rule in rules}
    best_key, best = None, None
    for combo in itertools.product(*(range(len(options[r])) for r in rules)):
        fa = combine(_restrict(options[r][i][1], names) for r, i in zip(rules, combo, strict=True))
        s = score(runs, fa.critical)
        distance = sum(i != defaults[r] for r, i in zip(rules, combo, strict=True))
        key = (s["false_alarms"], -(s["recall"] or 0), -(s["lead_median"] or -1e9), distance)
        if best_key is None or key < best_key:
            best_key, best = key, (combo, s)
    combo, s = best
    chosen = {r: options[r][i][0] for r, i in zip(rules, combo, strict=True) if options[r][i][0]}
    return chosen, s


def _default_index(rule: str) -> int:
    """The grid option equal to the rule's current defaults (for the tie-break)."""
    from stabmon.detect import DetectorConfig

    cfg = getattr(DetectorConfig(), rule)
    for i, opt in enumerate(GRID[rule]):
        if all(getattr(cfg, k) == v for k, v in opt.items()):
            return i
    return -1


def outcome_score(runs: Sequence[Run], first: dict[str, int | None]) -> dict[str, Any]:
    """Alerts (at any step) against the outcome view: how many runs that ended on the plateau
    were alerted, how many that ended below it were."""
    bad = [r for r in runs if ended_on_plateau(r)]
    good = [r for r in runs if not ended_on_plateau(r)]
    return {
        "ended_on_plateau": len(bad),
        "alerted_of_those": sum(first.get(r.name) is not None for r in bad),
        "ended_below": len(good),
        "alerted_of_those_below": sum(first.get(r.name) is not None for r in good),
    }


def early_stop_replay(runs: Sequence[Run], crit: dict[str, int | None]) -> dict[str, Any]:
    """What ``stabmon sweep --early-stop`` would have done to these (full) runs."""
    from trainer_hooks.lab.sweep_results import max_stable_lr

    full = sum(r.steps for r in runs)
    stopped = [r for r in runs if crit.get(r.name) is not None]
    run_steps = sum(crit[r.name] + 1 if crit.get(r.name) is not None else r.steps for r in runs)
    wrong = [r for r in stopped if not r.diverged]
    rows = [{"variant": r.variant, "lr": r.lr, "diverged": r.diverged} for r in runs]
    rows_stop = [
        {"variant": r.variant, "lr": r.lr, "diverged": r.diverged or crit.get(r.name) is not None}
        for r in runs
    ]
    return {
        "steps_full": full,
        "steps_with_early_stop": run_steps,
        "saved_fraction": 1 - run_steps / full if full else 0.0,
        "runs_stopped": len(stopped),
        "stopped_diverged": len(stopped) - len(wrong),
        "stopped_not_diverged": [
            {"name": r.name, "stopped_at": crit[r.name], "final_loss": r.final_loss, "val_loss": r.val_loss}
            for r in wrong
        ],
        "max_stable_lr_full": max_stable_lr(rows),
        "max_stable_lr_early_stop": max_stable_lr(rows_stop),
    }


def plot_timeline(
    runs: Sequence[Run],
    alerts: dict[str, dict[str, int | None]],
    path: Path,
    warnings: dict[str, int | None] | None = None,
) -> Path:
    """One row per diverging run (and per stable run the first detector of ``alerts`` alerted
    on: its false alarms): the divergence step, each detector's first alert, and (hollow)
    stabmon's first warning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = next(iter(alerts.values()), {})
    shown = [r for r in runs if r.diverged] + [
        r for r in runs if not r.diverged and primary.get(r.name) is not None
    ]
    fig, ax = plt.subplots(figsize=(9, 0.2 * len(shown) + 2.3), dpi=110)
    for y, r in enumerate(shown):
        if r.diverged:
            ax.plot([r.diverged_at], [y], "|", color="black", markersize=12, mew=2)
        ax.plot([0, r.steps], [y, y], color="0.88", lw=0.8, zorder=0)
    if warnings is not None:
        pts = [(warnings[r.name], y) for y, r in enumerate(shown) if warnings.get(r.name) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", mfc="none", color="tab:blue", ms=7, ls="none",
                label="stabmon warning")  # fmt: skip
    for (name, first), m in zip(alerts.items(), ["o", "^", "v", "s", "D"], strict=False):
        pts = [(first[r.name], y) for y, r in enumerate(shown) if first.get(r.name) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], m, label=name, alpha=0.85, ms=5, ls="none")
    ax.plot([], [], "|", color="black", markersize=10, mew=2, label="divergence (ground truth)")
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([r.name + ("" if r.diverged else "  (stable)") for r in shown], fontsize=6)
    ax.set_xlabel("step (symlog)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(0, max(r.steps for r in shown) if shown else 1)
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    # Below the axes: inside, it covers the last rows (the stable runs alerted on).
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3)
    ax.set_title("First critical alert per detector vs the divergence step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--corpus", "v2"]:  # corpus v2: mechanisms with matched controls
        from bench.corpus_v2_score import main as main_v2

        return main_v2(argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", choices=("lr-range",), default="lr-range", help="Or, first, `--corpus v2`.")
    p.add_argument("--root", default="out/corpus", help="Corpus directory (git-ignored).")
    p.add_argument("--reuse", action="store_true", help="Score the runs already there; train nothing.")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--preset", default="small", help="Model size of the corpus runs.")
    p.add_argument("--steps", type=int, default=300, help="Steps per run (warmup: a tenth of them).")
    p.add_argument("--img", default="docs/img", help="Where the timeline plot goes.")
    args = p.parse_args(argv)
    root = Path(args.root)
    if not args.reuse:
        build_corpus(root, args.preset, args.steps, args.jobs)
    cfgs = corpus_configs(root, args.preset, args.steps, args.jobs)
    runs = load_runs([cfg.out for cfg in cfgs])
    if not runs:
        raise SystemExit(f"no finished runs under {root}; run without --reuse to build the corpus")
    by_seed = {s: [r for r in runs if r.seed == s] for s in SEEDS}
    t0 = time.perf_counter()
    default = ours(runs)
    refs = references(runs)
    results = {"stabmon (defaults)": score(runs, default.critical)}
    results.update({name: score(runs, first) for name, first in refs.items()})
    warnings = score(runs, default.warning)
    by_subset = {
        label: score(subset, default.critical)
        for label, subset in (
            ("warmup 10%", [r for r in runs if 0 < r.warmup < r.steps // 2]),
            ("no warmup", [r for r in runs if r.warmup == 0]),
            ("warmup 50% (ramp)", [r for r in runs if r.warmup * 2 == r.steps]),
            ("slow ramp (500 of 600 steps)", [r for r in runs if r.warmup * 2 > r.steps]),
        )
        if subset
    }
    # Divergences after the first LATE_STEP steps: the ones a precursor can precede at all (most
    # early ones are blow-ups at the first LR increments, with nothing before them to see).
    late = [r for r in runs if not r.diverged or r.diverged_at >= LATE_STEP]
    results_late = {"stabmon (defaults)": score(late, default.critical)}
    results_late.update({name: score(late, first) for name, first in refs.items()})
    options = rule_options(runs)
    calib: dict[str, Any] = {}
    for fit, test in ((0, 1), (1, 0)):
        if not by_seed[fit] or not by_seed[test]:
            continue  # a partial corpus with one seed: nothing to hold out
        chosen, fit_score = calibrate(by_seed[fit], options)
        tuned = ours(by_seed[test], chosen)
        calib[f"fit seed {fit} -> test seed {test}"] = {
            "overrides": chosen,
            "fit": fit_score,
            "test": score(by_seed[test], tuned.critical),
            "test_defaults": score(by_seed[test], ours(by_seed[test]).critical),
        }
    outcome = {
        name: outcome_score(runs, first)
        for name, first in {"stabmon (defaults)": default.critical, **refs}.items()
    }
    sweep = [r for r in runs if 0 < r.warmup < r.steps // 2]  # the `stabmon sweep` grid
    early = early_stop_replay(sweep, default.critical)
    report = {
        "runs": len(runs),
        "positives": sum(r.diverged for r in runs),
        "results": results,
        "warnings": warnings,
        "by_subset": by_subset,
        "late": results_late,
        "calibration": calib,
        "early_stop": early,
        "outcome": outcome,
        "per_run": [
            {
                "name": r.name,
                "outcome": r.outcome,
                "kind": r.kind,
                "diverged_at": r.diverged_at,
                "decided_at": r.decided_at,
                "reason": r.reason,
                "final_loss": r.final_loss,
                "critical": default.critical[r.name],
                "critical_rule": default.critical_rule[r.name],
                "warning": default.warning[r.name],
                **{k: v[r.name] for k, v in refs.items()},
            }
            for r in runs
        ],
        "eval_s": round(time.perf_counter() - t0, 1),
    }
    report_dir = root / args.preset
    (report_dir / "detection.json").write_text(json.dumps(report, indent=1))
    md = table(results) + "\nwarnings (stabmon, any severity):\n\n" + table({"stabmon warnings": warnings})
    md += f"\ndivergences at step >= {LATE_STEP} (and all non-diverging runs):\n\n" + table(results_late)
    md += "\nby subset (stabmon defaults):\n\n" + table(by_subset)
    for k, c in calib.items():
        md += f"\n{k}: overrides {json.dumps(c['overrides'])}\n\n"
        md += table({"fit": c["fit"], "test (calibrated)": c["test"], "test (defaults)": c["test_defaults"]})
    md += "\noutcome view (alert at any step vs ending on the unigram plateau):\n\n"
    md += "| detector | alerted / ended on plateau | alerted / ended below it |\n|---|---|---|\n"
    for name, o in outcome.items():
        md += (
            f"| {name} | {o['alerted_of_those']}/{o['ended_on_plateau']} "
            f"| {o['alerted_of_those_below']}/{o['ended_below']} |\n"
        )
    (report_dir / "detection.md").write_text(md)
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    plot_timeline(
        runs,
        {
            "stabmon critical": default.critical,
            "foundry (window 20)": refs["foundry (window 20)"],
            "olmo 6-sigma (window 20)": refs["olmo 6-sigma (window 20)"],
        },
        img / f"detection_timeline_{args.preset}.png",
        warnings=default.warning,
    )
    print(md)
    print(json.dumps(early, indent=1))
    return report


if __name__ == "__main__":
    main()
