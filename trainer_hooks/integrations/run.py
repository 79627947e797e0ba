"""`MonitoredRun`: the framework-independent half of a stabmon training callback.

A framework callback translates its framework's events (train begins, an optimizer step ends,
train ends) into four calls on a `MonitoredRun`: :meth:`~MonitoredRun.start` opens the sink
(collector client, caller's sink or null sink; see `session.resolve_sink`) and attaches the
hooks with records numbered from a given step, :meth:`~MonitoredRun.records` says whether a
step is one the monitor records (``every=N``), :meth:`~MonitoredRun.stop_agreed` is the
per-step stop handshake (rank 0's alert-driven decision, broadcast to every rank), and
:meth:`~MonitoredRun.finish` removes the hooks and closes the run with its outcome
(``finished`` or ``stopped``, with the stop step and reason in its summary). Options are
validated when the callback is built, so a typo fails before any training starts.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from trainer_hooks.hooks import Monitor, attach
from trainer_hooks.integrations import session

log = logging.getLogger("stabmon.integrations")

_SET_BY_CALLBACK = {"model", "sink", "every", "start_step", "optimizer"}
"""``attach`` arguments the callbacks supply themselves (the gradient norm comes from the framework)."""


class MonitoredRun:
    """Options, sink, monitor and stop state of one callback (see the module docstring).

    ``url``/``token`` default to ``$STABMON_URL``/``$STABMON_TOKEN``; ``sink`` replaces the
    collector client by any sink (it stays the caller's to close; ``sink`` and ``url`` together
    are refused). ``every=N`` records every N-th optimizer step. ``on_alert`` is ``"log"``,
    ``"stop"`` or a callable taking each alert (returning ``"stop"`` to stop); ``stop_on`` the
    severities that ``"stop"`` acts on. ``run_name``/``project``/``run_id`` name the run;
    ``client_options`` go to the `Client` (``spool_dir=``, ``flush_interval_s=``, ...) and
    ``attach_options`` to ``trainer_hooks.hooks.attach`` (``sites=``, ``logits=``, ``reduce=``,
    ``n_head=``; ``reduce`` defaults to True under ``torch.distributed``).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        every: int = 1,
        on_alert: str | Callable[[Any], Any] | None = "log",
        sink: Any = None,
        run_name: str | None = None,
        project: str | None = None,
        run_id: str | None = None,
        stop_on: Iterable[str] = ("critical",),
        client_options: Mapping[str, Any] | None = None,
        attach_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if sink is not None and url is not None:
            raise ValueError(
                "pass either url= (stream to a collector) or sink= (any sink), not both; "
                "for both, pass sink=FanoutSink(Client(url, ...), other_sink)"
            )
        self.url, self.token, self.sink = url, token, sink
        self.every = every
        self.run_name, self.project, self.run_id = run_name, project, run_id
        self.alerts = session.AlertSwitch(on_alert, stop_on)
        self.client_options = dict(client_options or {})
        self.attach_options = dict(attach_options or {})
        self.monitor: Monitor | None = None
        self.stopped_at: int | None = None
        self._sink: Any = None
        self._owned = False

    @classmethod
    def from_options(cls, url: str | None = None, token: str | None = None, **options: Any) -> MonitoredRun:
        """A run from a callback's keywords: this class's own options, the rest go to ``attach``.

        An unknown keyword is a TypeError naming the accepted ones, raised when the callback is
        built rather than when training starts.
        """
        own = set(inspect.signature(cls).parameters) - {"url", "token", "attach_options"}
        for_attach = set(inspect.signature(attach).parameters) - _SET_BY_CALLBACK
        unknown = sorted(set(options) - own - for_attach)
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(own | for_attach))}"
            )
        attach_options = {k: options.pop(k) for k in list(options) if k not in own}
        return cls(url, token, attach_options=attach_options, **options)

    def start(
        self, model: torch.nn.Module, *, name: str, config: Mapping[str, Any], start_step: int
    ) -> Monitor:
        """Open the sink and attach the hooks; the first record is numbered ``start_step``.

        ``name`` is the run name unless ``run_name`` was given. A second start (a framework
        training twice with the same callback) first releases the previous run.
        """
        if self.monitor is not None:
            self._release(status=None)
        self.alerts.reset()
        self.stopped_at = None
        options = {"reduce": session.distributed(), **self.attach_options}
        self._sink, self._owned = session.resolve_sink(
            url=self.url,
            token=self.token,
            sink=self.sink,
            run_name=self.run_name or name,
            project=self.project,
            config=config,
            run_id=self.run_id,
            alert_switch=self.alerts,
            reduce=options["reduce"],
            client_options=self.client_options,
        )
        try:
            self.monitor = attach(model, sink=self._sink, every=self.every, start_step=start_step, **options)
        except Exception:
            session.release_sink(self._sink, self._owned, status=None)
            self._sink = None
            raise
        return self.monitor

    def records(self, step: int) -> bool:
        """Whether the monitor records ``step`` (numbered as in :meth:`start`)."""
        return step % self.every == 0

    def stop_agreed(self, step: int) -> bool:
        """The stop handshake of ``step``: True on every rank once rank 0 has a stop request.

        Every rank must call this at every step boundary (it is a collective under DDP).
        """
        if not session.agree(self.alerts.stop_requested):
            return False
        self.stopped_at = step
        if session.rank() == 0:
            log.warning("stabmon: stopping training at step %d after alert %s", step, self.alerts.reason)
        return True

    def finish(self, summary: Mapping[str, Any] | None = None, status: str | None = None) -> None:
        """Remove the hooks and close the run: ``stopped`` (with where and why) or ``finished``,
        unless ``status`` says otherwise (e.g. ``"stopped"`` when training raised)."""
        summary = dict(summary or {})
        if self.stopped_at is not None:
            summary.update(stopped_at=self.stopped_at, stop_reason=self.alerts.reason)
        if status is None:
            status = "stopped" if self.stopped_at is not None else "finished"
        self._release(status, summary)

    def _release(self, status: str | None, summary: Mapping[str, Any] | None = None) -> None:
        try:
            if self.monitor is not None:
                self.monitor.remove()
            if self._sink is not None:
                session.release_sink(self._sink, self._owned, status, summary)
        except Exception:
            log.exception("stabmon: releasing the monitor failed")
        finally:
            self.monitor = self._sink = None
