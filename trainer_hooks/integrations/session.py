"""What every framework callback shares: where records go, what an alert does, when ranks stop.

A callback is a thin adapter from a framework's step events to `trainer_hooks.hooks.attach`;
the decisions that do not depend on the framework live here, and `MonitoredRun` (in
:mod:`.run`) puts them together, so the Hugging Face and Lightning callbacks cannot drift
apart. :func:`resolve_sink` picks the sink (an explicit one, else a collector `Client` from
``url``/``token`` or the ``STABMON_URL``/``STABMON_TOKEN`` environment, else a `NullSink`),
building the client on rank 0 only when records are reduced across ranks so a job registers
one run, not one per process. :class:`AlertSwitch` turns ``on_alert`` ("log", "stop" or a
callable) into the client's alert callback plus a thread-safe stop request: alerts arrive on
the client's sender thread, the framework acts on the request at its next step boundary.
:func:`agree` broadcasts rank 0's decision, so under DDP every rank stops at the same step.
:func:`json_safe` makes a framework's configuration storable as a run's config.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from stabmon.wire import encode_value
from trainer_hooks.client import Client, NullSink, RunInfo

log = logging.getLogger("stabmon.integrations")

URL_ENV = "STABMON_URL"
TOKEN_ENV = "STABMON_TOKEN"
ON_ALERT_MODES = ("log", "stop")


def _field(alert: Any, name: str) -> Any:
    """A field of an alert, whether it arrives as an `AlertPublic` or as a plain dict."""
    return alert.get(name) if isinstance(alert, Mapping) else getattr(alert, name, None)


def describe(alert: Any) -> str:
    return (
        f"[{_field(alert, 'severity')}] {_field(alert, 'rule')} at step {_field(alert, 'step')}: "
        f"{_field(alert, 'message')}"
    )


class AlertSwitch:
    """The client's ``on_alert`` callback, plus the stop request the training thread polls.

    ``on_alert="log"`` logs each new or changed alert; ``"stop"`` also requests a stop when an
    open alert's severity is in ``stop_on``; a callable is called with each alert (an
    `AlertPublic`) and requests a stop by returning ``"stop"``. The callback runs on the client's
    sender thread, so it only sets an event; the training thread reads :attr:`stop_requested`.
    """

    def __init__(
        self, on_alert: str | Callable[[Any], Any] | None = "log", stop_on: Iterable[str] = ("critical",)
    ):
        if on_alert is None:
            on_alert = "log"
        if isinstance(on_alert, str):
            if on_alert not in ON_ALERT_MODES:
                raise ValueError(
                    f"on_alert must be one of {', '.join(map(repr, ON_ALERT_MODES))} or a callable, "
                    f"got {on_alert!r}"
                )
        elif not callable(on_alert):
            raise TypeError(f"on_alert must be 'log', 'stop' or a callable, got {type(on_alert).__name__}")
        self.on_alert = on_alert
        self.stop_on = frozenset(stop_on)
        unknown = self.stop_on - {"warning", "critical"}
        if unknown:
            raise ValueError(f"stop_on takes alert severities 'warning'/'critical', got {sorted(unknown)}")
        self._stop = threading.Event()
        self.reason: str | None = None

    def __call__(self, alert: Any) -> None:
        if callable(self.on_alert):
            if self.on_alert(alert) == "stop":
                self.request_stop(describe(alert))
            return
        log.warning("stabmon alert %s", describe(alert))
        if (
            self.on_alert == "stop"
            and _field(alert, "status") == "open"
            and _field(alert, "severity") in self.stop_on
        ):
            self.request_stop(describe(alert))

    def reset(self) -> None:
        """Forget a stop request (a new training run starts)."""
        self._stop.clear()
        self.reason = None

    def request_stop(self, reason: str) -> None:
        """Ask the training job to stop at its next step boundary (any thread)."""
        if not self._stop.is_set():
            self.reason = reason
            self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()


# ---------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------
def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if distributed() else 0


_CPU_GROUPS: dict[Any, Any] = {}


def cpu_group() -> Any:
    """A process group that carries CPU tensors: the default group, unless it speaks NCCL only.

    Over NCCL the stop flag would have to be a CUDA tensor, and reading it back would sync the
    device at every step; a gloo group over the same ranks carries it on the host instead. It is
    created once per default group, at the first handshake, which every rank reaches together
    (creating a group is itself a collective).
    """
    backend = str(dist.get_backend())
    if "gloo" in backend or "mpi" in backend:  # e.g. "gloo", "cpu:gloo,cuda:nccl"
        return None
    world = dist.group.WORLD
    if world not in _CPU_GROUPS:
        _CPU_GROUPS[world] = dist.new_group(backend="gloo")
    return _CPU_GROUPS[world]


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a one-element broadcast on the host); ``flag`` itself
    without DDP.

    Only rank 0 talks to the collector, so only rank 0 hears alerts; every rank must call this
    at the same step boundary, which is what makes them stop at the same step.
    """
    if not distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(t, src=0, group=cpu_group())
    return bool(t.item())


def shared_run_id() -> str:
    """A fresh run id, the same on every rank (rank 0 draws it)."""
    run_id = [uuid.uuid4().hex if rank() == 0 else None]
    if distributed():
        dist.broadcast_object_list(run_id, src=0, group=cpu_group())
    return str(run_id[0])


# ---------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------
def resolve_sink(
    *,
    url: str | None,
    token: str | None,
    sink: Any,
    run_name: str,
    project: str | None,
    config: Mapping[str, Any],
    run_id: str | None,
    alert_switch: AlertSwitch,
    reduce: bool,
    client_options: Mapping[str, Any] | None = None,
) -> tuple[Any, bool]:
    """The sink a callback writes to and whether the callback owns (and so closes) it.

    An explicit ``sink`` wins (it is the caller's to close); otherwise a
    `Client` for ``url`` (or ``$STABMON_URL``) with ``token`` (or ``$STABMON_TOKEN``); otherwise a
    `NullSink`. With several ranks and ``reduce``, ranks other than 0 get a `NullSink`: the
    reduced record is sent by rank 0 alone. Without ``reduce`` every rank sends its own records
    to the same run (same id on every rank).
    """
    if sink is not None:
        return sink, False
    url = url or os.environ.get(URL_ENV) or None
    token = token or os.environ.get(TOKEN_ENV) or None
    if url is None:
        log.warning(
            "stabmon: no collector configured (url= or $%s); statistics are computed and dropped", URL_ENV
        )
        return NullSink(), True
    run_id = run_id or shared_run_id()
    if distributed() and reduce and rank() != 0:
        return NullSink(), True
    run = RunInfo(name=run_name, project=project, config=dict(config), id=run_id)
    return Client(url, token=token, run=run, on_alert=alert_switch, **dict(client_options or {})), True


def release_sink(
    sink: Any, owned: bool, status: str | None, summary: Mapping[str, Any] | None = None
) -> None:
    """Flush a caller's sink; close one the callback built, recording the run's outcome on a `Client`."""
    if not owned:
        sink.flush()
    elif isinstance(sink, Client):
        sink.close(status=status, summary=dict(summary) if summary else None)
    else:
        sink.close()


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
def json_safe(obj: Any, _depth: int = 0) -> Any:
    """``obj`` as plain JSON data: mappings, lists, strings, finite numbers, booleans and None.

    Non-finite floats become the wire strings ``"nan"``/``"inf"``/``"-inf"``; enums their
    value; anything else (a dtype, a path, a callable) its ``str``.
    """
    if _depth > 32:
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else encode_value(obj)
    if isinstance(obj, enum.Enum):
        return json_safe(obj.value, _depth + 1)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in obj]
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return json_safe(obj.item(), _depth + 1)
    try:
        json.dumps(obj, allow_nan=False)
        return obj
    except (TypeError, ValueError):
        return str(obj)


# ---------------------------------------------------------------------------
# Step helpers
# ---------------------------------------------------------------------------
def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor | None:
    """The L2 norm of all gradients, as a 0-d tensor on their device (no host sync), or None."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def current_lr(optimizer: Any) -> float | None:
    """The learning rate of the optimizer's first parameter group (what the step applies)."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return None
    lr = groups[0].get("lr")
    return float(lr) if isinstance(lr, (int, float)) else None


def guarded(method: Callable) -> Callable:
    """Run a callback method; log its first failure and turn monitoring off instead of raising.

    Monitoring must never crash the training job. The instance keeps ``_failed``; once set, the
    guarded methods do nothing (the stop handshake, which every rank must take part in, is not
    guarded).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if getattr(self, "_failed", False):
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception:
            self._failed = True
            log.exception(
                "stabmon: %s failed; monitoring is off for the rest of this run", method.__qualname__
            )
            return None

    return wrapper
