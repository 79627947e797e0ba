"""One call from command-line options to a sink, for the training CLI and scripts.

``open_sink(collector=URL, token=T, jsonl=PATH, run=RunInfo(...))`` returns a
:class:`~trainer_hooks.client.Client` when a collector URL is given, a
:class:`~trainer_hooks.client.JsonlSink` when a path is given, a
:class:`~trainer_hooks.client.FanoutSink` of both when both are, and a
:class:`~trainer_hooks.client.NullSink` when neither is, so the training loop never
branches on what is configured.
"""

from __future__ import annotations

import os
from typing import Any

from trainer_hooks.client.client import Client, RunInfo
from trainer_hooks.client.sinks import FanoutSink, JsonlSink, NullSink, Sink


def open_sink(
    collector: str | None = None,
    token: str | None = None,
    jsonl: str | os.PathLike | None = None,
    run: RunInfo | None = None,
    **client_options: Any,
) -> Sink:
    """The sink for these options (see the module docstring); ``client_options`` go to ``Client``."""
    sinks: list[Sink] = []
    if jsonl is not None:
        sinks.append(JsonlSink(jsonl))
    if collector:
        sinks.append(Client(collector, token=token, run=run, **client_options))
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else FanoutSink(*sinks)
