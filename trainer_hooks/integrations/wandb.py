"""A sink that mirrors stabmon records (and alerts) into a Weights & Biases run.

``FanoutSink(Client(...), WandbSink(run))`` keeps a team's W&B dashboards and adds stabmon's
series to them: every value of a record is logged as ``stabmon/{key}`` (``stabmon/loss``,
``stabmon/layer.3.fc2.l2_mean``; other ranks' records, hooks attached with ``reduce=False``, as
``stabmon/rank{r}/{key}``) against its own x-axis ``stabmon/step`` (``define_metric``), logged in the
same ``run.log`` call. Why not ``run.log(..., step=step)``: W&B's step must only grow, and the
job's own logging (the HF Trainer's ``WandbCallback``, a user's ``run.log``) advances it on its own
count; a second writer passing its own steps would have its rows dropped or misplaced. With the
custom x-axis both coexist. NaN and infinities are logged as they are (W&B stores them).

Alerts: give the sink ``alerts_from=client`` (it reads ``client.alerts``, the run's open alerts,
after each record) or pass ``on_alert=sink.alert`` to the :class:`~trainer_hooks.client.Client`
(which also sees an alert that opened and resolved between two ingest answers), and each new or
escalated alert becomes one W&B alert (``run.alert``: ``WARN`` for warnings, ``ERROR`` for
critical), which W&B sends to Slack or email when the user has enabled alerts in their W&B
settings. ``alerts=False`` turns that off.

``write`` only queues the record; a daemon thread calls ``run.log``, so neither the training step
nor the client's sender thread ever waits on W&B, and nothing W&B raises reaches them (it is
logged). The queue is bounded; past ``max_queue`` the oldest records are dropped and counted in
:attr:`WandbSink.dropped`. ``wandb`` is imported only when the sink is built without a run. The
run stays the caller's: :meth:`close` drains the queue but does not ``finish`` it.
"""

from __future__ import annotations

import logging
from typing import Any

from trainer_hooks.integrations.background import BackgroundWriter

log = logging.getLogger("stabmon.integrations")

_LEVELS = {"warning": "WARN", "critical": "ERROR"}


class WandbSink(BackgroundWriter):
    """Logs each record's values to a W&B run under ``prefix`` (see the module docstring)."""

    def __init__(
        self,
        run: Any = None,
        *,
        prefix: str = "stabmon/",
        alerts: bool = True,
        alerts_from: Any = None,
        max_queue: int = 10_000,
    ) -> None:
        super().__init__(max_queue, "stabmon-wandb")
        if run is None:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("WandbSink needs the wandb package: pip install 'stabmon[wandb]'") from e
            run = wandb.run
            if run is None:
                raise ValueError("WandbSink: no W&B run; call wandb.init() first or pass run=")
        self.run = run
        self.prefix = prefix
        self.alerts_enabled = alerts
        self.alerts_from = alerts_from
        self.alerts_sent = 0
        self._step_key = f"{prefix}step"
        self._seen: set[tuple[int, str]] = set()
        run.define_metric(self._step_key)
        run.define_metric(f"{prefix}*", step_metric=self._step_key)
        self._thread.start()

    # -- the Sink interface ----------------------------------------------------------------
    def write(self, record: dict) -> None:
        """Queue one record (O(1)); never blocks, never raises."""
        self._put(("record", record))

    def alert(self, alert: Any) -> None:
        """An ``on_alert`` callback: queue a W&B alert for an alert (or severity) not yet sent,
        including one that opened and resolved between two ingest answers."""
        if self.alerts_enabled:
            self._put(("alert", alert))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued item is handed to W&B (at most ``timeout`` s)."""
        self._wait_handled(timeout)

    def close(self) -> None:
        """Hand over what is queued, stop the thread; later writes are ignored. Idempotent. The
        W&B run is not finished: it is the caller's."""
        self._stop()

    # -- internals -------------------------------------------------------------------------
    def _handle(self, item: tuple[str, Any]) -> None:
        kind, payload = item
        if kind == "record":
            self._log(payload)
            if self.alerts_from is not None and self.alerts_enabled:
                for a in getattr(self.alerts_from, "alerts", ()):
                    self._alert(a)
        else:
            self._alert(payload)

    def _log(self, record: dict) -> None:
        rank = int(record.get("rank", 0))
        prefix = self.prefix + (f"rank{rank}/" if rank else "")
        data = {prefix + key: float(value) for key, value in record["values"].items()}
        data[self._step_key] = int(record["step"])
        self.run.log(data)

    def _alert(self, alert: Any) -> None:
        key = (alert.id, alert.severity)
        if key in self._seen:
            return
        self._seen.add(key)
        resolved = f" (resolved at step {alert.last_step})" if alert.status == "resolved" else ""
        self.run.alert(
            title=f"stabmon: {alert.rule} ({alert.severity})",
            text=f"step {alert.step}: {alert.message}{resolved}",
            level=_LEVELS.get(alert.severity, "INFO"),
            wait_duration=0,
        )
        self.alerts_sent += 1
