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

from .checkpoints import Trainer
from .config import ACTIONS, Action, PolicyConfig
from .policy import AlertPolicy, PolicyEvent, policy_from

__all__ = ["ACTIONS", "Action", "AlertPolicy", "PolicyConfig", "PolicyEvent", "Trainer", "policy_from"]
