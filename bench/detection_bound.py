"""How much recall can *any* threshold detector on the recorded signals reach without a false alarm?

The detection benchmark scores one detector. This asks the question behind its targets: on a
given corpus, is recall >= 95% at zero critical false alarms reachable at all from the series
the hooks stream? It computes an upper bound for the whole family of detectors stabmon's rules
belong to: an OR over features, each feature a per-step function of one series kind's prefix
(computed per layer and taken as the maximum over layers), each firing when the feature reaches
its own threshold at or after a burn-in step.

For a zero-false-alarm member of that family, every feature's threshold must lie above the
largest value the feature takes on any stable run (from the burn-in on). A diverging run can
therefore only be caught if some feature, before its divergence step, exceeds that stable
maximum. Counting those runs gives the bound: no choice of thresholds and no OR-combination of
the listed features does better, and requiring a feature to hold for several steps only lowers
it. The features are the ones the detector's rules use, with a few variations each:

- ``level``: the value itself (for attention entropy, its inverse: low entropy is bad);
- ``base``: level / the median of its first 3 observations from the burn-in on (the early
  baseline of ``norm_growth``; for entropy, the drop ``entropy_collapse`` measures);
- ``win{W}``: value / the smallest of the previous W observations (growth rate);
- ``z{W}``: the robust z-score against the previous W observations (``loss_spike``,
  ``grad_spike``), and ``rise``: the smoothed loss (median of 5) over its running minimum,
  the excursion the ground truth itself uses.

    .venv/bin/python bench/detection_bound.py [--preset small] [--root out/corpus] [--burn-in 10]

Writes ``detection_bound.json`` and ``detection_bound.md`` next to the corpus.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.detection_metrics import Run, _num, ended_on_plateau, load_runs  # noqa: E402

_LAYER = re.compile(r"^layer\.(\d+)\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
_RUN_LEVEL = ("loss", "grad_norm")
_WINDOWS = (10, 25, 50)
_MAD_TO_SIGMA = 1.4826

Features = dict[str, list[float]]
"""Feature name -> its value at each recorded step of one run (NaN where undefined)."""


def _kind(key: str) -> str | None:
    """The series kind a key belongs to: ``qkv.l2_mean`` for ``layer.3.qkv.l2_mean``, or a
    run-level key; None for keys no rule watches (``lr``, throughput)."""
    m = _LAYER.match(key)
    if m:
        return f"{m.group(2)}.{m.group(3)}"
    return key if key in _RUN_LEVEL else None


def _transforms(values: Sequence[float], burn_in: int, kind: str) -> dict[str, list[float]]:
    """Every feature of one series (already in "bigger is worse" orientation), per step."""
    n = len(values)
    nan = math.nan
    out: dict[str, list[float]] = {}
    finite = [v if math.isfinite(v) else nan for v in values]
    out["level"] = finite
    base_pts = [v for v in finite[burn_in : burn_in + 3] if not math.isnan(v)]
    base = statistics.median(base_pts) if base_pts else nan
    out["base"] = [v / base if base and base > 0 and not math.isnan(base) else nan for v in finite]
    for w in _WINDOWS:
        growth, zs = [], []
        for i in range(n):
            prev = [v for v in finite[max(0, i - w) : i] if not math.isnan(v)]
            v = finite[i]
            if len(prev) < min(w, 8) or math.isnan(v):
                growth.append(nan)
                zs.append(nan)
                continue
            lo = min(prev)
            growth.append(v / lo if lo > 0 else nan)
            med = statistics.median(prev)
            mad = statistics.median(abs(p - med) for p in prev)
            sigma = max(_MAD_TO_SIGMA * mad, 0.005 * abs(med), 1e-12)
            zs.append((v - med) / sigma)
        out[f"win{w}"] = growth
        if kind in _RUN_LEVEL:
            out[f"z{w}"] = zs
    if kind == "loss":
        smoothed, rise, run_min = [], [], math.inf
        for i in range(n):
            window = [v for v in finite[max(0, i - 4) : i + 1] if not math.isnan(v)]
            s = statistics.median(window) if window else nan
            smoothed.append(s)
            rise.append(s - run_min if i >= burn_in and math.isfinite(run_min) else nan)
            if i >= burn_in and not math.isnan(s):
                run_min = min(run_min, s)
        out["rise"] = rise
    return out


def run_features(run: Run, burn_in: int) -> Features:
    """Every feature of every watched series kind of one run, maximised over layers."""
    steps = [s for s, _ in run.records]
    per_key: dict[str, list[float]] = defaultdict(lambda: [math.nan] * len(steps))
    for i, (_, values) in enumerate(run.records):
        for key, v in values.items():
            if _kind(key) is None:
                continue
            v = _num(v)
            if key.endswith("attn.entropy_mean"):
                v = 1.0 / v if v > 0 else math.inf  # low entropy is the bad direction
            per_key[key][i] = v
    feats: Features = {}
    for key, series in per_key.items():
        kind = _kind(key)
        for name, vals in _transforms(series, burn_in, kind).items():
            fname = f"{kind}:{name}"
            cur = feats.setdefault(fname, [math.nan] * len(steps))
            for i, v in enumerate(vals):
                if not math.isnan(v) and (math.isnan(cur[i]) or v > cur[i]):
                    cur[i] = v
    return feats


def _max_between(vals: Sequence[float], steps: Sequence[int], lo: int, hi: int | None) -> float:
    xs = [
        v
        for v, s in zip(vals, steps, strict=True)
        if s >= lo and (hi is None or s <= hi) and not math.isnan(v)
    ]
    return max(xs) if xs else -math.inf


def _crossings(
    runs: Sequence[Run], stable: Sequence[Run], burn_in: int, feats: dict[str, Features] | None
) -> Callable[[Run, int | None], list[str]]:
    """Every feature's ceiling, the largest value any of the ``stable`` runs takes from the
    burn-in on; returns ``crossed(run, hi)``: the features that ``run`` takes above their ceiling
    between the burn-in and step ``hi`` (None: the end of the run)."""
    feats = feats if feats is not None else {r.name: run_features(r, burn_in) for r in runs}
    steps = {r.name: [s for s, _ in r.records] for r in runs}
    names = sorted({f for fs in feats.values() for f in fs})

    def peak(r: Run, f: str, hi: int | None) -> float:
        return _max_between(feats[r.name].get(f, []), steps[r.name], burn_in, hi)

    ceiling = {f: max((peak(r, f, None) for r in stable), default=-math.inf) for f in names}
    return lambda r, hi: [f for f in names if peak(r, f, hi) > ceiling[f]]


def held_out(
    runs: Sequence[Run],
    burn_in: int,
    fit_seed: int,
    min_divergence: int = 0,
    feats: dict[str, Features] | None = None,
) -> dict:
    """The bound's detector as a real one: every feature's threshold set just above the stable
    runs of ``fit_seed``, then scored on the other seeds' runs (recall at or before the divergence
    step, false alarms: stable runs crossing any threshold). Shows how much of the bound is
    thresholds fitted to the very runs they are scored on."""
    fit = [r for r in runs if r.seed == fit_seed and not r.diverged]
    test = [r for r in runs if r.seed != fit_seed]
    crossed = _crossings(runs, fit, burn_in, feats)
    pos = [r for r in test if r.diverged and r.diverged_at >= min_divergence]
    neg = [r for r in test if not r.diverged]
    return {
        "burn_in": burn_in,
        "fit_seed": fit_seed,
        "min_divergence": min_divergence,
        "recall_n": sum(bool(crossed(r, r.diverged_at)) for r in pos),
        "diverged": len(pos),
        "false_alarms": sum(bool(crossed(r, None)) for r in neg),
        "stable": len(neg),
    }


def bound(
    runs: Sequence[Run],
    burn_in: int,
    min_divergence: int = 0,
    exclude_degraded: bool = False,
    feats: dict[str, Features] | None = None,
) -> dict:
    """The zero-false-alarm recall bound over ``runs`` (see the module docstring). With
    ``exclude_degraded``, stable runs that `ended_on_plateau` do not set the ceilings: a sensitivity
    check of how much the bound owes to those borderline labels."""
    stable = [r for r in runs if not r.diverged and not (exclude_degraded and ended_on_plateau(r))]
    diverged = [r for r in runs if r.diverged and r.diverged_at >= min_divergence]
    crossed = _crossings(runs, stable, burn_in, feats)
    caught: dict[str, list[str]] = {}
    per_feature: dict[str, int] = defaultdict(int)
    for r in diverged:
        fs = crossed(r, r.diverged_at)
        caught[r.name] = fs
        for f in fs:
            per_feature[f] += 1
    n = len(diverged)
    hit = [name for name, fs in caught.items() if fs]
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in diverged:
        g = "baseline" if r.variant == "baseline" else "normalised"
        groups[g][1] += 1
        groups[g][0] += bool(caught[r.name])
    return {
        "burn_in": burn_in,
        "min_divergence": min_divergence,
        "exclude_degraded": exclude_degraded,
        "diverged": n,
        "stable": len(stable),
        "recall_bound": len(hit) / n if n else None,
        "recall_bound_n": len(hit),
        "by_group": {g: {"caught": c, "runs": t} for g, (c, t) in sorted(groups.items())},
        "best_features": sorted(per_feature.items(), key=lambda kv: -kv[1])[:8],
        "caught": {k: v[:5] for k, v in sorted(caught.items()) if v},
        "missed": sorted(k for k, v in caught.items() if not v),
    }


def _group(r: dict, name: str) -> str:
    g = r["by_group"].get(name)
    return f"{g['caught']}/{g['runs']}" if g else "-"


def _counted(r: dict) -> str:
    """Which divergences a result counts."""
    return "all" if not r["min_divergence"] else f"at step >= {r['min_divergence']}"


def to_markdown(preset: str, results: Sequence[dict]) -> str:
    lines = [
        f"# Zero-false-alarm recall bound, `{preset}` corpus",
        "",
        "| burn-in | stable runs setting the ceilings | divergences counted | bound "
        "| baseline | normalised | features that catch most |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        best = ", ".join(f"`{f}` ({n})" for f, n in r["best_features"][:3]) or "-"
        which = _counted(r)
        ceiling = "all but those that ended on the plateau" if r["exclude_degraded"] else "all"
        lines.append(
            f"| {r['burn_in']} | {ceiling} ({r['stable']}) | {which} ({r['diverged']}) "
            f"| {r['recall_bound_n']}/{r['diverged']} ({100 * (r['recall_bound'] or 0):.0f}%) "
            f"| {_group(r, 'baseline')} | {_group(r, 'normalised')} | {best} |"
        )
    return "\n".join(lines) + "\n"


def held_out_markdown(results: Sequence[dict]) -> str:
    lines = [
        "",
        "Thresholds fitted on one seed's stable runs, scored on the other seed:",
        "",
        "| burn-in | fit seed | divergences counted | recall | false alarms |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        which = _counted(r)
        lines.append(
            f"| {r['burn_in']} | {r['fit_seed']} | {which} | {r['recall_n']}/{r['diverged']} "
            f"| {r['false_alarms']}/{r['stable']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--root", default="out/corpus")
    ap.add_argument("--burn-in", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--late", type=int, default=20, help="also bound divergences at step >= this")
    args = ap.parse_args(argv)
    base = Path(args.root) / args.preset
    runs = load_runs(sorted(p for p in base.iterdir() if (p / "runs").is_dir()))
    if not runs:
        ap.error(f"no recorded runs under {base}; build the corpus with bench/detection.py first")
    results, split = [], []
    seeds = sorted({r.seed for r in runs})
    for b in args.burn_in:
        feats = {r.name: run_features(r, b) for r in runs}
        results += [bound(runs, b, m, exclude, feats) for exclude in (False, True) for m in (0, args.late)]
        if len(seeds) > 1:
            split += [held_out(runs, b, seed, m, feats) for seed in seeds for m in (0, args.late)]
    (base / "detection_bound.json").write_text(json.dumps({"bound": results, "held_out": split}, indent=1))
    md = to_markdown(args.preset, results) + (held_out_markdown(split) if split else "")
    (base / "detection_bound.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
