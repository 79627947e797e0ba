"""Forward hooks that stream per-layer stability statistics from any PyTorch transformer.

``attach(model, sink=...)`` discovers the blocks' projections (stabmon's GPT, nanoGPT/GPT-2,
Llama family, or an explicit ``sites=`` mapping), records output L2 norms, attention-logit maxima
(or bounds) and attention entropy on the device, and ``monitor.step(loss=...)`` emits one record
per training step with a single host transfer.
"""

from .attach import attach, build_plan
from .discovery import ALL_SITES, BUILTIN_RULES, OUTPUT_SITES, SiteRef, discover_sites
from .monitor import Monitor, Sink

__all__ = [
    "ALL_SITES",
    "BUILTIN_RULES",
    "OUTPUT_SITES",
    "Monitor",
    "SiteRef",
    "Sink",
    "attach",
    "build_plan",
    "discover_sites",
]
