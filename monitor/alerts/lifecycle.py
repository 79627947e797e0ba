"""The alert lifecycle, as a pure function: findings in, changed alerts out.

One OPEN alert per (run, rule) (a partial unique index backs it in the store): a rule's first
finding opens an alert at that step; while the rule keeps firing the alert's ``last_step``,
message and evidence follow the newest finding and its severity can only go up (warning ->
critical, in the wire's severity order); the first observed step without a finding for the
rule resolves it. :func:`advance` replays a batch's steps through that machine in memory; the
ingest service hands the changed alerts to the store, in the same transaction as the points.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from stabmon.wire import severity_rank


class FindingLike(Protocol):
    """What a detector reports (:class:`stabmon.detect.Finding` fits)."""

    rule: str
    severity: str
    step: int
    message: str
    evidence: dict[str, Any]


@dataclass
class AlertRecord:
    """An alert as the lifecycle sees it; ``id`` is None until the store inserts it."""

    id: int | None
    rule: str
    severity: str
    status: str
    step: int
    last_step: int
    message: str
    evidence: dict[str, Any]
    created_at: datetime
    dirty: bool = False
    """Changed by :func:`advance`: the store must write it."""


def advance(
    open_alerts: Iterable[AlertRecord],
    steps: Sequence[tuple[int, Sequence[FindingLike]]],
    now: datetime,
) -> list[AlertRecord]:
    """Advance a run's open alerts through ``steps`` (each: a step and the findings that fired
    at it, in step order) and return the alerts that changed (opened, updated, escalated or
    resolved), resolutions first, so a rule resolved and re-opened in one batch never has two
    open rows at once."""
    current = {a.rule: a for a in open_alerts}
    finished: list[AlertRecord] = []  # opened and resolved within these steps, or resolved now
    for _step, findings in steps:
        firing = {f.rule: f for f in findings}
        for rule, f in firing.items():
            a = current.get(rule)
            if a is None:
                current[rule] = AlertRecord(
                    None, rule, f.severity, "open", f.step, f.step, f.message, dict(f.evidence), now, True
                )
                continue
            a.last_step, a.message, a.evidence, a.dirty = f.step, f.message, dict(f.evidence), True
            if severity_rank(f.severity) > severity_rank(a.severity):
                a.severity = f.severity
        for rule in [r for r in current if r not in firing]:
            a = current.pop(rule)
            a.status, a.dirty = "resolved", True
            finished.append(a)
    return [a for a in finished + list(current.values()) if a.dirty]
