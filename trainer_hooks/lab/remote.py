"""A monitored training run in one call: stream to the collector, act on its alerts, close the
run with the right status.

:func:`run_monitored` is what ``stabmon train --collector URL --on-alert rollback`` and
``stabmon demo`` run. It builds the :class:`~trainer_hooks.client.Client` with an
:class:`~trainer_hooks.actions.AlertPolicy` as its ``on_alert`` (and as a trainer callback, so
the policy acts on the training thread), trains, and then closes the run on the collector with
the outcome: ``stopped`` when the policy stopped it, ``diverged`` when the loss diverged
(:mod:`stabmon.divergence`), ``finished`` otherwise, plus a summary (losses, divergence step,
what the policy did) that the dashboard shows. ``train()`` closes its sink when it returns;
here the client is wrapped so that this close only flushes, and the real close, carrying the
status, comes after the result is known.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_hooks.actions import AlertPolicy, PolicyConfig, policy_from

log = logging.getLogger("stabmon.actions")


class _FlushOnClose:
    """Forwards to a sink but turns ``close()`` into a bounded ``flush()``: the owner closes."""

    def __init__(self, sink: Any, flush_timeout: float) -> None:
        self.sink = sink
        self.flush_timeout = flush_timeout

    def write(self, record: dict) -> None:
        self.sink.write(record)

    def flush(self, timeout: float | None = None) -> Any:
        return self.sink.flush(timeout)

    def close(self) -> None:
        self.sink.flush(self.flush_timeout)


@dataclass
class MonitoredRun:
    """What :func:`run_monitored` returns: the training result, the run's id on the collector,
    the status it was closed with, and the policy (``events``, ``rollbacks``)."""

    result: Any
    run_id: str | None
    status: str
    policy: AlertPolicy | None

    def summary(self) -> dict[str, Any]:
        d = self.result.to_dict()
        keep = ("final_loss", "min_loss", "val_loss", "val_ppl", "diverged", "diverged_at",
                "divergence_reason", "outcome", "divergence_kind", "decision_step", "steps_run",
                "tokens_per_s", "stopped_by", "num_params")  # fmt: skip
        out = {k: d[k] for k in keep if k in d}
        if self.policy is not None:
            out["alert_policy"] = self.policy.summary()
        return out


def final_status(result: Any, policy: AlertPolicy | None) -> str:
    if policy is not None and policy.stopped:
        return "stopped"
    return "diverged" if result.diverged else "finished"


def run_monitored(
    cfg: Any,
    *,
    collector: str | None = None,
    token: str | None = None,
    project: str | None = None,
    run_id: str | None = None,
    on_alert: str | AlertPolicy | PolicyConfig | dict | None = None,
    callbacks: Iterable[Callable] = (),
    resume: str | Path | None = None,
    close_timeout: float = 30.0,
    run_config: dict[str, Any] | None = None,
    alert_listeners: Iterable[Callable[[Any], Any]] = (),
    **client_options: Any,
) -> MonitoredRun:
    """Train ``cfg`` (a ``TrainConfig``), streaming to ``collector`` and acting on its alerts.

    ``on_alert``: ``"log"``, ``"stop"``, ``"rollback"``, a :class:`PolicyConfig`, a mapping of
    its fields, or an :class:`AlertPolicy`; it needs a collector (alerts come from there).
    Without a collector this is plain ``train(cfg)``. ``run_config`` adds fields to the run's
    config on the collector (e.g. ``webhooks``, ``detector`` overrides). ``alert_listeners`` are
    called with every new or changed alert on the client's thread (progress displays; they must
    not block).
    """
    from trainer_hooks.lab.train import train

    policy = policy_from(on_alert)
    if policy is not None and not collector:
        raise ValueError("an alert policy needs a collector (--collector URL): alerts come from it")
    cbs = list(callbacks)
    if not collector:
        result = train(cfg, callbacks=cbs, resume=resume)
        return MonitoredRun(result, None, final_status(result, None), None)

    from trainer_hooks.client import Client, RunInfo

    resolved = cfg.resolved()
    config = {**resolved.to_dict(), **(run_config or {})}
    if policy is not None:
        config["alert_policy"] = {k: v for k, v in vars(policy.config).items() if v is not None}
    listeners = [*([policy] if policy is not None else []), *alert_listeners]

    def fan_out(alert: Any) -> None:
        for listener in listeners:
            try:
                listener(alert)
            except Exception:
                log.exception("stabmon: an alert listener failed")

    client = Client(
        collector,
        token=token,
        run=RunInfo(name=resolved.name, project=project, config=config, id=run_id),
        on_alert=fan_out if listeners else None,
        **client_options,
    )
    if policy is not None:
        policy.source = client  # open alerts are re-read each step (see AlertPolicy.source)
        cbs.append(policy)
    status = "stopped"
    try:
        result = train(cfg, sink=_FlushOnClose(client, close_timeout), callbacks=cbs, resume=resume)
        status = final_status(result, policy)
        run = MonitoredRun(result, client.run_id, status, policy)
        client.close(status=status, summary=run.summary(), timeout=close_timeout)
        return run
    finally:
        # An exception (KeyboardInterrupt included) still closes the run, as stopped.
        client.close(status=status, timeout=min(close_timeout, 10.0))
