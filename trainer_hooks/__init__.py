"""stabmon's training side: the library a training job imports (forward hooks
:mod:`~trainer_hooks.hooks`, the collector client :mod:`~trainer_hooks.client`, the HF and
Lightning callbacks :mod:`~trainer_hooks.integrations`, the alert policy
:mod:`~trainer_hooks.actions`) and, apart from it, our research lab :mod:`trainer_hooks.lab`
(the GPT with the paper's variants, its trainer and the LR sweep).

The common entry points are re-exported here: ``attach`` and ``Monitor`` (forward hooks, from
:mod:`trainer_hooks.hooks`) and ``Client``, ``RunInfo`` and ``MemorySink`` (from :mod:`trainer_hooks.client`).
They load lazily on first access, so ``import trainer_hooks.lab.config`` (or this package) stays
cheap and never fails, even where torch or httpx are missing until a name is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "attach": "trainer_hooks.hooks",
    "Monitor": "trainer_hooks.hooks",
    "Client": "trainer_hooks.client",
    "MemorySink": "trainer_hooks.client",
    "RunInfo": "trainer_hooks.client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer_hooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
