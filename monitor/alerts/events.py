"""Alert events: which changes in a run's alerts a webhook receiver hears about.

The ingest path reports every alert a batch touched; most touches (the alert's ``last_step``
moved, its message changed) are not news. :func:`classify_events` keeps the three that are:
``opened``, ``escalated`` (severity rose) and ``resolved``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from monitor.alerts.payload import Event
from stabmon.wire import SEVERITY_RANK


def classify_events(
    alerts: Iterable[Mapping[str, Any]], seen: dict[int, tuple[str, str]]
) -> list[tuple[Event, Mapping[str, Any]]]:
    """The events in a list of alert snapshots, given what was seen before (updated in place).

    ``seen`` maps alert id -> (severity, status) last notified. A new open alert is
    ``opened``; a known open alert whose severity rose is ``escalated``; an alert that turns
    up resolved (and was not already resolved) is ``resolved``, preceded by ``opened`` if it
    was never seen open (the delivery log drops that one if it was already delivered).
    Anything else (``last_step`` moved, message changed) is not an event.
    """
    events: list[tuple[Event, Mapping[str, Any]]] = []
    for alert in alerts:
        aid = int(alert["id"])
        sev, status = str(alert["severity"]), str(alert["status"])
        prev = seen.get(aid)
        if status == "resolved":
            if prev is None:
                # Opened and resolved between two looks (within one batch): the receiver still
                # hears that it opened, so a resolution never refers to an unknown alert.
                events.append(("opened", alert))
            if prev is None or prev[1] != "resolved":
                events.append(("resolved", alert))
        elif prev is None or prev[1] == "resolved":
            events.append(("opened", alert))
        elif SEVERITY_RANK.get(sev, 0) > SEVERITY_RANK.get(prev[0], 0):
            events.append(("escalated", alert))
        seen[aid] = (sev, status)
    return events
