"""Closing the loop: what a training job does when the collector (or a local detector) alerts.

An :class:`AlertPolicy` is two things at once. As the client's ``on_alert`` callback it only
records the alert under a lock (it runs on the client's sender thread, which must never wait
on the training loop). As a ``Trainer`` callback it runs on the training thread after every
step, and there it acts on what was recorded, at a step boundary, where the model and the
optimizer are consistent:

- ``log``: log the alert (``stabmon.actions`` logger), nothing else;
- ``stop``: the step already finished; save a checkpoint, return ``"stop"`` (the trainer ends
  the run) and report the run as ``stopped`` (:func:`trainer_hooks.lab.remote.run_monitored` closes
  the client with that status);
- ``rollback``: restore the newest checkpoint taken *before the first warning* of the current
  episode, scale the learning rate by ``lr_factor`` and carry on, at most ``max_rollbacks``
  times (then ``after_max_rollbacks``, by default ``stop``). The policy takes those
  checkpoints itself every ``checkpoint_every`` steps and keeps the newest
  ``keep_checkpoints`` in memory (or on disk with ``checkpoint_dir``), plus the newest one
  before an open warning, so a slow alert still finds a clean state to return to.

Which severity triggers which action is configured per severity (``on_warning``,
``on_critical``), optionally for some rules only. Steps: the monitor counts every step it
closes, so after a rollback the steps it reports keep increasing (a *global* step; the
collector's series stay monotonic and its detector keeps watching the replayed steps). The
policy counts the same way, maps an alert's global step back to the trainer step to find the
checkpoint, and ignores alerts about steps of an abandoned trajectory.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from stabmon.wire import severity_rank

log = logging.getLogger("stabmon.actions")

Action = Literal["none", "log", "stop", "rollback"]
ACTIONS: tuple[str, ...] = ("none", "log", "stop", "rollback")
# When alerts of one step ask for different actions, the strongest wins.
_STRENGTH = {"none": 0, "log": 1, "rollback": 2, "stop": 3}


class Trainer(Protocol):
    """What a trainer offers the policy; :class:`trainer_hooks.lab.train.Trainer` is one."""

    step_num: int
    lr_scale: float

    def training_state(self) -> dict: ...  # tensors alias the live ones
    def restore_training_state(self, state: dict) -> None: ...
    def read_checkpoint(self, path: Path) -> dict: ...
    def save_checkpoint(self, path: Path) -> Path: ...


@dataclass
class PolicyConfig:
    on_warning: Action = "log"
    on_critical: Action = "stop"
    rules: tuple[str, ...] | None = None
    """Only alerts of these rules act and start an episode (others are only logged); None:
    every rule."""
    checkpoint_every: int = 20
    """Steps between the policy's rollback checkpoints (only when an action can roll back)."""
    keep_checkpoints: int = 5
    """Newest checkpoints kept; with ``checkpoint_every`` this bounds how late an alert may
    arrive and still find a pre-warning checkpoint (here 100 steps)."""
    checkpoint_dir: str | None = None
    """Keep rollback checkpoints as files here; None keeps them in memory (small models)."""
    lr_factor: float = 0.5
    """After a rollback, the LR multiplier becomes ``lr_factor`` times the restored one."""
    max_rollbacks: int = 3
    after_max_rollbacks: Action = "stop"
    rollback_margin: int = 0
    """Restore a checkpoint at least this many steps before the first warning step."""
    episode_gap: int = 50
    """An *episode* (whose first alert decides the rollback target) ends once no alert of an
    acting rule has been open or reported for this many steps; alerts closer together than
    this belong to one episode, so a rollback goes back before the first of them."""
    stop_dir: str | None = None
    """Where ``stop`` saves its checkpoint; None: ``checkpoint_dir``, else the trainer's
    ``out``, else a new temporary directory (the path is logged and kept in ``events``)."""

    def __post_init__(self) -> None:
        for name in ("on_warning", "on_critical", "after_max_rollbacks"):
            if getattr(self, name) not in ACTIONS:
                raise ValueError(f"{name} must be one of {', '.join(ACTIONS)}, got {getattr(self, name)!r}")
        if self.after_max_rollbacks == "rollback":
            raise ValueError("after_max_rollbacks cannot be 'rollback'")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("checkpoint_every and keep_checkpoints must be >= 1")
        if not 0.0 < self.lr_factor <= 1.0:
            raise ValueError(f"lr_factor must be in (0, 1], got {self.lr_factor}")
        if self.max_rollbacks < 0 or self.rollback_margin < 0 or self.episode_gap < 1:
            raise ValueError("max_rollbacks and rollback_margin must be >= 0, episode_gap >= 1")
        if self.rules is not None:
            self.rules = tuple(self.rules)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> PolicyConfig:
        """The ``--on-alert`` presets: ``log`` (log everything), ``stop`` (stop on critical),
        ``rollback`` (roll back on critical, stop once the rollbacks are used up)."""
        presets = {
            "log": {"on_warning": "log", "on_critical": "log"},
            "stop": {"on_warning": "log", "on_critical": "stop"},
            "rollback": {"on_warning": "log", "on_critical": "rollback"},
        }
        if name not in presets:
            raise ValueError(f"unknown alert policy {name!r}; choose one of {', '.join(presets)}")
        return cls(**{**presets[name], **overrides})

    @property
    def may_roll_back(self) -> bool:
        return "rollback" in (self.on_warning, self.on_critical)


@dataclass
class _Checkpoint:
    step: int
    """Trainer steps done when it was taken (``trainer.step_num``): the next step to run."""
    state: dict | None = None
    path: Path | None = None


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
    """The closed loop; see the module docstring. ``policy(alert_or_alerts)`` takes alerts from
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
        self._checkpoints: list[_Checkpoint] = []
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
            self._take_checkpoint(trainer)
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

    # -- checkpoints -------------------------------------------------------------------------
    def _take_checkpoint(self, trainer: Trainer) -> None:
        step = int(trainer.step_num)
        if self._checkpoints and self._checkpoints[-1].step == step:
            return
        try:
            if self.config.checkpoint_dir is None:
                # state_dict() tensors alias the live parameters: copy them.
                ck = _Checkpoint(step, state=copy.deepcopy(trainer.training_state()))
            else:
                path = Path(self.config.checkpoint_dir) / f"rollback_step_{step}.pt"
                ck = _Checkpoint(step, path=trainer.save_checkpoint(path))
        except Exception:
            log.exception("stabmon: rollback checkpoint at step %d failed; training continues", step)
            return
        self._checkpoints.append(ck)
        self._prune()

    def _prune(self) -> None:
        keep = set(
            range(max(0, len(self._checkpoints) - self.config.keep_checkpoints), len(self._checkpoints))
        )
        if self._first_warning is not None:
            pinned = self._checkpoint_before(self.trainer_step(self._first_warning))
            if pinned is not None:
                keep.add(self._checkpoints.index(pinned))
        for i, ck in enumerate(self._checkpoints):
            if i not in keep and ck.path is not None:
                ck.path.unlink(missing_ok=True)
        self._checkpoints = [ck for i, ck in enumerate(self._checkpoints) if i in keep]

    def _checkpoint_before(self, trainer_step: int) -> _Checkpoint | None:
        """The newest checkpoint older than the parameters that produced ``trainer_step``'s
        statistics (minus the margin): a checkpoint at step s holds the parameters the forward
        pass of step s uses, so a warning at step w needs s <= w - 1."""
        limit = trainer_step - 1 - self.config.rollback_margin
        found = [ck for ck in self._checkpoints if ck.step <= limit]
        return found[-1] if found else None

    @property
    def checkpoint_steps(self) -> list[int]:
        return [ck.step for ck in self._checkpoints]

    # -- the actions -------------------------------------------------------------------------
    def _rollback(self, trainer: Trainer, g: int, trigger: dict[str, Any] | None) -> bool:
        first = self._first_warning if self._first_warning is not None else g
        target = self.trainer_step(first)
        ck = self._checkpoint_before(target)
        if ck is None:
            log.error(
                "stabmon: no checkpoint before step %d to roll back to (have %s)",
                target,
                self.checkpoint_steps,
            )
            return False
        from_step = int(trainer.step_num)
        state = copy.deepcopy(ck.state) if ck.state is not None else trainer.read_checkpoint(ck.path)
        trainer.restore_training_state(state)
        trainer.lr_scale = float(trainer.lr_scale) * self.config.lr_factor
        self.rollbacks += 1
        self._checkpoints = [c for c in self._checkpoints if c.step <= ck.step]
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


__all__: Iterable[str] = ["ACTIONS", "AlertPolicy", "PolicyConfig", "PolicyEvent", "policy_from"]
