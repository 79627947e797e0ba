"""Our research lab, not the library: the GPT with the paper's normalisation variants
(:mod:`~trainer_hooks.lab.model`), its byte-level data, optimizer, trainer and checkpoints,
and the learning-rate sweep. It is how stabmon reproduces divergences and tests the detector
on real runs; user jobs need none of it (they import :mod:`trainer_hooks.hooks`,
:mod:`trainer_hooks.client`, :mod:`trainer_hooks.integrations` and :mod:`trainer_hooks.actions`).
"""
