"""stabmon: divergence-detection monitoring for LLM training.

This package holds what both sides share and nothing heavy: the wire contract
(`stabmon.wire`, pydantic only), the ground-truth divergence function
(`stabmon.divergence`, pure Python) and the `stabmon` command line (`stabmon.cli`),
which imports the training side (torch) or the server side (FastAPI) lazily, per command.
"""

__version__ = "0.1.0"
