"""The :class:`AlertPolicy`: alerts recorded from any thread, acted on at the trainer's step boundary.

Intake (:meth:`AlertPolicy.on_alert`, the client's ``on_alert``) only queues alerts under a
lock; the ``Trainer`` callback (:meth:`AlertPolicy.on_step`) decides per step which action the
alerts ask for (the strongest wins), tracks the alert *episode* whose first warning dates a
rollback, maps the monitor's global steps back to trainer steps across rollbacks, and carries
out ``stop`` and ``rollback`` (restoring one of its :mod:`.checkpoints`). The whole loop is
described in :mod:`trainer_hooks.actions`; :func:`policy_from` builds a policy from a preset
name, a config or a mapping.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stabmon.wire import severity_rank

from .checkpoints import RollbackCheckpoints, Trainer
from .config import PolicyConfig

log = logging.getLogger("stabmon.actions")

# When alerts of one step ask for different actions, the strongest wins.
_STRENGTH = {"none": 0, "log": 1, "rollback": 2, "stop": 3}


@dataclass
class PolicyEvent:
    """What the policy did: one entry per action taken, for logs, summaries and tests."""

    action: str
    global_step: int
    """The monitor's step count when it acted."""
    trainer_step: int
    alert: dict[str, Any]
    detail: dict[str, Any] = field(default_factory=dict)


def _alert_dict(alert: Any) -> dict[str, Any]:
    return alert.model_dump() if hasattr(alert, "model_dump") else dict(alert)


class AlertPolicy:
    """The closed loop; see :mod:`trainer_hooks.actions`. ``policy(alert_or_alerts)`` takes alerts from
    any thread; ``policy(step_info)`` (a ``Trainer`` callback) acts on the training thread."""

    def __init__(self, config: PolicyConfig | None = None, *, source: Any = None, **overrides: Any) -> None:
        self.config = PolicyConfig(**overrides) if config is None else config
        if config is not None and overrides:
            raise TypeError("pass either a PolicyConfig or keyword settings, not both")
        self.source = source
        """Optional object with an ``alerts`` property (a ``Client``): its open alerts are read
        at every step, so an alert that keeps firing after a rollback acts again."""
        self._lock = threading.Lock()
        self._logged: set[tuple[Any, Any, str]] = set()
        self._pending: list[dict[str, Any]] = []
        self._global = 0  # steps closed so far, counted like the monitor counts them
        self._segments: list[tuple[int, int]] = []  # (global step, trainer step) at each (re)start
        self._stale_before = -1  # alerts whose last_step <= this belong to an abandoned trajectory
        self._first_warning: int | None = None  # global step of the current episode's first alert
        self._episode_last = -1  # global step at which an alert of the episode was last reported
        self._checkpoints = RollbackCheckpoints(self.config)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.rollbacks = 0
        self.stopped = False
        self.events: list[PolicyEvent] = []
        self.alerts_seen = 0

    # -- intake: any thread ----------------------------------------------------------------
    def __call__(self, arg: Any) -> Any:
        if hasattr(arg, "trainer") and hasattr(arg, "loss"):
            return self.on_step(arg)
        self.on_alert(arg)
        return None

    def on_alert(self, alerts: Any) -> None:
        """Record one alert or a list of them (AlertPublic models or dicts). Never blocks long,
        never raises: this runs on the client's thread."""
        try:
            items = alerts if isinstance(alerts, (list, tuple)) else [alerts]
            parsed = [_alert_dict(a) for a in items]
        except Exception:
            log.exception("stabmon: ignoring an alert the policy could not read")
            return
        with self._lock:
            self._pending.extend(parsed)
            self.alerts_seen += len(parsed)

    # -- action: the training thread ---------------------------------------------------------
    def on_step(self, info: Any) -> str | None:
        """The ``Trainer`` callback: act on recorded alerts, take rollback checkpoints."""
        trainer = info.trainer
        g = self._global
        self._global += 1
        if not self._segments:
            self._segments.append((g, int(info.step)))
        with self._lock:
            pending, self._pending = self._pending, []
        if self.source is not None:
            try:
                pending.extend(_alert_dict(a) for a in self.source.alerts)
            except Exception:
                log.exception("stabmon: could not read the open alerts of %r", self.source)
        action, trigger, acting = self._decide(pending)
        if acting:
            self._episode_last = g
        elif self._first_warning is not None and g - self._episode_last > self.config.episode_gap:
            # The episode is over (quiet for episode_gap steps): a later one rolls back to its own start.
            self._first_warning = None
        if action == "rollback":
            if self.rollbacks >= self.config.max_rollbacks:
                log.warning(
                    "stabmon: %d rollbacks used; now: %s", self.rollbacks, self.config.after_max_rollbacks
                )
                action = self.config.after_max_rollbacks
            elif not self._rollback(trainer, g, trigger):
                action = self.config.after_max_rollbacks
        if action == "stop":
            self._stop(trainer, g, trigger)
            return "stop"
        if (
            action != "rollback"
            and self.config.may_roll_back
            and trainer.step_num % self.config.checkpoint_every == 0
        ):
            self._checkpoints.take(trainer, self._pinned_step())
        return None

    def _decide(self, pending: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None, bool]:
        """The strongest action asked for, the alert asking for it, and whether any alert of
        an acting rule is among ``pending``."""
        cfg = self.config
        best, trigger, acting = "none", None, False
        for alert in pending:
            if int(alert.get("last_step", alert.get("step", 0))) <= self._stale_before:
                continue  # about steps a rollback already undid
            sev = str(alert.get("severity", "warning"))
            if alert.get("status", "open") != "open":
                # Already over: nothing to act on, but it still dates the episode's start.
                if cfg.rules is None or alert.get("rule") in cfg.rules:
                    acting = True
                    step = max(int(alert.get("step", 0)), self._stale_before + 1)
                    if self._first_warning is None or step < self._first_warning:
                        self._first_warning = step
                continue
            act = cfg.on_critical if sev == "critical" else cfg.on_warning
            if cfg.rules is not None and alert.get("rule") not in cfg.rules:
                act = "log" if act != "none" else "none"
            else:
                # The episode starts at the first alert of an acting rule; one still open from
                # before a rollback counts as starting right after it.
                acting = True
                step = max(int(alert.get("step", 0)), self._stale_before + 1)
                if self._first_warning is None or step < self._first_warning:
                    self._first_warning = step
            key = (alert.get("id"), alert.get("rule"), sev)
            if act != "none" and key not in self._logged:
                self._logged.add(key)
                log.warning(
                    "stabmon alert [%s] %s at step %s: %s",
                    sev,
                    alert.get("rule"),
                    alert.get("step"),
                    alert.get("message", ""),
                )
            if _STRENGTH[act] > _STRENGTH[best] or (
                act == best
                and trigger is not None
                and severity_rank(sev) > severity_rank(trigger.get("severity"))
            ):
                best, trigger = act, alert
        return best, trigger, acting

    def trainer_step(self, global_step: int) -> int:
        """The trainer step that the monitor's ``global_step`` measured."""
        for g0, t0 in reversed(self._segments):
            if global_step >= g0:
                return t0 + (global_step - g0)
        return global_step

    @property
    def checkpoint_steps(self) -> list[int]:
        return self._checkpoints.steps

    def _pinned_step(self) -> int | None:
        """The trainer step whose checkpoint the open episode would roll back before, if any."""
        return None if self._first_warning is None else self.trainer_step(self._first_warning)

    # -- the actions -------------------------------------------------------------------------
    def _rollback(self, trainer: Trainer, g: int, trigger: dict[str, Any] | None) -> bool:
        first = self._first_warning if self._first_warning is not None else g
        target = self.trainer_step(first)
        ck = self._checkpoints.before(target)
        if ck is None:
            log.error(
                "stabmon: no checkpoint before step %d to roll back to (have %s)",
                target,
                self.checkpoint_steps,
            )
            return False
        from_step = int(trainer.step_num)
        state = self._checkpoints.state(ck, trainer)
        trainer.restore_training_state(state)
        trainer.lr_scale = float(trainer.lr_scale) * self.config.lr_factor
        self.rollbacks += 1
        self._checkpoints.drop_after(ck.step)
        self._stale_before = g  # anything reported up to now is about the abandoned steps
        self._first_warning = None
        self._segments.append((g + 1, ck.step))
        detail = {
            "from_step": from_step,
            "to_step": ck.step,
            "first_warning_step": target,
            "lr_scale": trainer.lr_scale,
            "rollback": self.rollbacks,
        }
        self.events.append(PolicyEvent("rollback", g, from_step - 1, trigger or {}, detail))
        log.warning(
            "stabmon: rolled back from step %d to step %d (first warning at step %d); LR scale %.3g (%d/%d)",
            from_step,
            ck.step,
            target,
            trainer.lr_scale,
            self.rollbacks,
            self.config.max_rollbacks,
        )
        return True

    def _stop(self, trainer: Trainer, g: int, trigger: dict[str, Any] | None) -> None:
        directory = self.config.stop_dir or self.config.checkpoint_dir or getattr(trainer.cfg, "out", None)
        if directory is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="stabmon-stop-")
            directory = self._tmp.name
        path: Path | None = None
        try:
            path = trainer.save_checkpoint(Path(directory) / f"stopped_step_{trainer.step_num}.pt")
        except Exception:
            log.exception("stabmon: could not save the checkpoint before stopping")
        self.stopped = True
        detail = {"checkpoint": str(path) if path else None, "step": int(trainer.step_num)}
        self.events.append(PolicyEvent("stop", g, int(trainer.step_num) - 1, trigger or {}, detail))
        log.warning("stabmon: stopping the run after step %d on alert; checkpoint %s", trainer.step_num, path)

    @property
    def run_status(self) -> str | None:
        """``stopped`` once the policy stopped the run, else None (the job decides)."""
        return "stopped" if self.stopped else None

    def summary(self) -> dict[str, Any]:
        """JSON-able: what the policy did, for the run's summary."""
        return {
            "alerts_seen": self.alerts_seen,
            "rollbacks": self.rollbacks,
            "stopped": self.stopped,
            "events": [
                {"action": e.action, "global_step": e.global_step, "trainer_step": e.trainer_step,
                 "rule": e.alert.get("rule"), "severity": e.alert.get("severity"), **e.detail}
                for e in self.events if e.action != "log"
            ],
        }  # fmt: skip


def policy_from(spec: str | AlertPolicy | PolicyConfig | Mapping[str, Any] | None) -> AlertPolicy | None:
    """An :class:`AlertPolicy` from a preset name, a config, a mapping of settings, or itself."""
    if spec is None or isinstance(spec, AlertPolicy):
        return spec
    if isinstance(spec, PolicyConfig):
        return AlertPolicy(spec)
    if isinstance(spec, str):
        return AlertPolicy(PolicyConfig.named(spec))
    if isinstance(spec, Mapping):
        return AlertPolicy(PolicyConfig(**dict(spec)))
    raise TypeError(f"cannot make an alert policy from {type(spec).__name__}")
