"""What an :class:`~trainer_hooks.actions.AlertPolicy` is told to do: the actions and their settings.

:class:`PolicyConfig` says which action (``none``, ``log``, ``stop``, ``rollback``) each
severity asks for, for which rules, and how rollbacks are bounded (checkpoint cadence and
retention, the LR cut, how many rollbacks before giving up, how long an alert episode lasts).
It is validated when built, so a typo in ``--on-alert`` or a config file fails at start rather
than at the first alert; :meth:`PolicyConfig.named` holds the command line's presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Action = Literal["none", "log", "stop", "rollback"]
ACTIONS: tuple[str, ...] = ("none", "log", "stop", "rollback")


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
