"""The training side's outputs: sinks for per-step records and the collector client.

``attach(model, sink=...)`` writes one ``{"step", "rank", "values"}`` record per emitted
step to a sink. :class:`Client` streams them to the stabmon collector (batched, spooled to
disk while the collector is away, alerts coming back); :class:`MemorySink`,
:class:`JsonlSink` (read back with :func:`read_jsonl`), :class:`NullSink` and
:class:`FanoutSink` cover notebooks, files, "nothing configured" and combinations;
:func:`open_sink` builds the right one from command-line style options.
"""

from trainer_hooks.client.client import Client, ClientConfig, ClientStats, RunInfo
from trainer_hooks.client.factory import open_sink
from trainer_hooks.client.sinks import (
    FanoutSink,
    JsonlSink,
    MemorySink,
    NullSink,
    Sink,
    iter_jsonl,
    read_jsonl,
)
from trainer_hooks.client.spool import SpoolInUseError

__all__ = [
    "Client",
    "ClientConfig",
    "ClientStats",
    "FanoutSink",
    "JsonlSink",
    "MemorySink",
    "NullSink",
    "RunInfo",
    "Sink",
    "SpoolInUseError",
    "iter_jsonl",
    "open_sink",
    "read_jsonl",
]
