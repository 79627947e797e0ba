"""The rollback checkpoints an :class:`~trainer_hooks.actions.AlertPolicy` keeps for itself.

A rollback needs a state from *before* the first warning of an episode, and alerts can arrive
late (the collector answers a batch after the steps it holds). :class:`RollbackCheckpoints`
holds the policy's own checkpoints (in memory, or as files under ``checkpoint_dir``), keeps the
newest ``keep_checkpoints`` plus the newest one before an open warning (*pinned*, so a slow
alert still finds a clean state), and finds the checkpoint to return to for a given trainer
step. :class:`Trainer` is what the policy needs from a training loop to take and restore them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .config import PolicyConfig

log = logging.getLogger("stabmon.actions")


class Trainer(Protocol):
    """What a trainer offers the policy; :class:`trainer_hooks.lab.train.Trainer` is one."""

    step_num: int
    lr_scale: float

    def training_state(self) -> dict: ...  # tensors alias the live ones
    def restore_training_state(self, state: dict) -> None: ...
    def read_checkpoint(self, path: Path) -> dict: ...
    def save_checkpoint(self, path: Path) -> Path: ...


@dataclass
class Checkpoint:
    step: int
    """Trainer steps done when it was taken (``trainer.step_num``): the next step to run."""
    state: dict | None = None
    path: Path | None = None


class RollbackCheckpoints:
    """The policy's checkpoints, oldest first. Settings (``keep_checkpoints``,
    ``checkpoint_dir``, ``rollback_margin``) are read from ``config`` when used."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._items: list[Checkpoint] = []

    @property
    def steps(self) -> list[int]:
        return [ck.step for ck in self._items]

    def take(self, trainer: Trainer, pin: int | None) -> None:
        """Checkpoint the trainer's current state (once per step), then prune; ``pin`` is the
        trainer step of the open episode's first warning, whose checkpoint must survive."""
        step = int(trainer.step_num)
        if self._items and self._items[-1].step == step:
            return
        try:
            if self.config.checkpoint_dir is None:
                # state_dict() tensors alias the live parameters: copy them.
                ck = Checkpoint(step, state=copy.deepcopy(trainer.training_state()))
            else:
                path = Path(self.config.checkpoint_dir) / f"rollback_step_{step}.pt"
                ck = Checkpoint(step, path=trainer.save_checkpoint(path))
        except Exception:
            log.exception("stabmon: rollback checkpoint at step %d failed; training continues", step)
            return
        self._items.append(ck)
        self._prune(pin)

    def _prune(self, pin: int | None) -> None:
        keep = set(range(max(0, len(self._items) - self.config.keep_checkpoints), len(self._items)))
        if pin is not None:
            pinned = self.before(pin)
            if pinned is not None:
                keep.add(self._items.index(pinned))
        for i, ck in enumerate(self._items):
            if i not in keep and ck.path is not None:
                ck.path.unlink(missing_ok=True)
        self._items = [ck for i, ck in enumerate(self._items) if i in keep]

    def before(self, trainer_step: int) -> Checkpoint | None:
        """The newest checkpoint older than the parameters that produced ``trainer_step``'s
        statistics (minus the margin): a checkpoint at step s holds the parameters the forward
        pass of step s uses, so a warning at step w needs s <= w - 1."""
        limit = trainer_step - 1 - self.config.rollback_margin
        found = [ck for ck in self._items if ck.step <= limit]
        return found[-1] if found else None

    def state(self, ck: Checkpoint, trainer: Trainer) -> dict:
        """``ck``'s training state, ready for ``trainer.restore_training_state`` (a copy: the
        checkpoint stays usable for a later rollback)."""
        return copy.deepcopy(ck.state) if ck.state is not None else trainer.read_checkpoint(ck.path)

    def drop_after(self, step: int) -> None:
        """Forget the checkpoints newer than ``step`` (the trajectory a rollback abandoned)."""
        self._items = [c for c in self._items if c.step <= step]
