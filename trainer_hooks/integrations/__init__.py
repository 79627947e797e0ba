"""Framework integrations: stabmon in a Hugging Face ``Trainer``, a Lightning ``Trainer``, TensorBoard or
Weights & Biases.

Each integration is one module that imports its framework at import time, so this package
imports none of them: ``from trainer_hooks.integrations.hf import StabmonCallback`` needs
``transformers``, ``trainer_hooks.integrations.lightning`` needs ``lightning`` and
``trainer_hooks.integrations.tensorboard`` needs ``tensorboard``, and a missing framework fails
with an ImportError that names the package to install (``trainer_hooks.integrations.wandb`` is
given its W&B run, so it imports ``wandb`` only when built without one). What the callbacks share
(where records go, what an alert does, how ranks agree on stopping) lives in
:mod:`trainer_hooks.integrations.session`.
"""
