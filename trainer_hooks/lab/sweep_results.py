"""Reading a learning-rate sweep's answer: the top of each variant's stable range.

Pure Python over the sweep's result rows (no torch), so the ``stabmon sweep`` command and the
benchmarks that relabel recorded runs share it.
"""

from __future__ import annotations


def max_stable_lr(rows: list[dict]) -> dict[str, float | None]:
    """Per variant, the top of the stable range: the largest LR of the grid such that no seed
    diverged at it or at any smaller LR (None: already the smallest LR diverged). A stable LR
    above a diverging one (a lucky seed pair) does not extend the range, and a run the detector
    stopped early (``stopped_early``) counts as unstable: it was not allowed to show otherwise."""
    out: dict[str, float | None] = {}
    for v in dict.fromkeys(r["variant"] for r in rows):
        by_lr: dict[float, bool] = {}
        for r in rows:
            if r["variant"] == v:
                bad = bool(r["diverged"]) or bool(r.get("stopped_early"))
                by_lr[r["lr"]] = by_lr.get(r["lr"], False) or bad
        top = None
        for lr in sorted(by_lr):
            if by_lr[lr]:
                break
            top = lr
        out[v] = top
    return out
