"""Foreign metric names onto the wire grammar: the default table, per-layer patterns, ``--map``.

Logs name the same quantity differently (``train/loss`` in a Hugging Face W&B run, ``lm_loss`` in
Megatron, ``learning_rate`` in the Trainer's state), and the detector's rules watch the wire's
names (``loss``, ``grad_norm``, ``lr``, ``layer.{i}.{site}.{stat}``). :class:`NameMap` resolves
each source name once, in this order:

1. ``--map SRC=KEY`` from the user (``SRC=-`` skips the column on purpose);
2. :data:`DEFAULT_NAMES` (exact, then case-insensitive);
3. bookkeeping columns (:data:`SKIPPED`: wall times, W&B's ``_runtime``) are skipped, and so are
   other ranks' series of stabmon's own mirrors (``rank1/...``);
4. a per-layer name that fits :data:`LAYER_PATTERN` (``layers/3/fc2/l2_mean``, ``layer_3.qkv.l2_max``,
   stabmon's own W&B mirror ``stabmon/layer.3.fc2.l2_mean``) becomes ``layer.3.fc2.l2_mean``;
5. anything else keeps its own name when that is a valid key, or a cleaned one (``/`` -> ``.``,
   other characters -> ``_``: ``train/tokens per s`` -> ``train.tokens_per_s``).

Nothing is dropped silently: every rename, clean-up and skip is reported by :meth:`NameMap.notes`.
Two source names landing on one key is an error that suggests the ``--map`` to resolve it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from stabmon.history.model import HistoryError
from stabmon.wire import SITES, is_valid_key, layer_key, match_layer_key

DEFAULT_NAMES: dict[str, str] = {
    # loss: the training loss the detector's loss_spike rule and the divergence definition read
    "loss": "loss",
    "train/loss": "loss",
    "train_loss_step": "loss",
    "lm_loss": "loss",
    "train/lm_loss": "loss",
    "lm loss": "loss",
    "loss/train": "loss",
    # gradient norm (grad_spike)
    "grad_norm": "grad_norm",
    "train/grad_norm": "grad_norm",
    "grad-norm": "grad_norm",
    "gradient_norm": "grad_norm",
    "optim/grad_norm": "grad_norm",
    # learning rate
    "lr": "lr",
    "learning_rate": "lr",
    "learning-rate": "lr",
    "train/learning_rate": "lr",
    "train/lr": "lr",
    "optim/lr": "lr",
    # validation loss
    "val_loss": "val_loss",
    "val/loss": "val_loss",
    "eval_loss": "val_loss",
    "eval/loss": "val_loss",
    "validation/loss": "val_loss",
}
"""Source name -> wire key, for the names the common trainers and loggers use."""

SKIPPED: frozenset[str] = frozenset(
    {"wall time", "wall_time", "walltime", "timestamp", "_timestamp", "_runtime", "time", "date", "datetime"}
)
"""Bookkeeping columns (compared in lower case): clock times, not training signals."""

_SITES = "|".join(sorted(SITES, key=len, reverse=True))
LAYER_PATTERN = re.compile(
    rf"^(?:.*[/.])?(?:layers?|blocks?|h)[._/]?(\d+)[._/]({_SITES})[._/]([A-Za-z0-9_]+)$", re.IGNORECASE
)
"""A per-layer statistic under another spelling: layer index, site, statistic."""
_OTHER_RANK = re.compile(r"^(?:stabmon/)?rank([1-9]\d*)/")
_CLEAN = re.compile(r"[^A-Za-z0-9_.]+")


def parse_map(items: list[str] | tuple[str, ...]) -> dict[str, str | None]:
    """``["train/ppl=ppl", "junk=-"]`` -> ``{"train/ppl": "ppl", "junk": None}`` (None: skip)."""
    out: dict[str, str | None] = {}
    for item in items:
        src, eq, key = item.rpartition("=")
        if not eq or not src:
            raise HistoryError(f"--map {item!r}: expected SOURCE=KEY (or SOURCE=- to skip it)")
        key = key.strip()
        if key == "-":
            out[src] = None
        elif is_valid_key(key):
            out[src] = key
        else:
            raise HistoryError(
                f"--map {item!r}: {key!r} is not a valid series key (dot-separated [A-Za-z0-9_] parts, "
                "e.g. loss, layer.3.fc2.l2_mean)"
            )
    return out


class NameMap:
    """Resolves source names to wire keys (see the module docstring); remembers what it did."""

    def __init__(self, explicit: Mapping[str, str | None] | None = None) -> None:
        self.explicit = dict(explicit or {})
        self._cache: dict[str, str | None] = {}
        self._owner: dict[str, str] = {}  # key -> the source name that claimed it
        self.renamed: dict[str, str] = {}
        self.cleaned: dict[str, str] = {}
        self.kept: list[str] = []
        self.skipped: dict[str, str] = {}  # source name -> why

    def key(self, src: str, where: str = "") -> str | None:
        """The wire key for ``src``, or None to skip it; ``where`` names the file for errors."""
        try:
            return self._cache[src]
        except KeyError:
            pass
        key, how = self._resolve(src)
        if key is not None:
            other = self._owner.get(key)
            if other is not None and other != src:
                raise HistoryError(
                    f"{where}{src!r} and {other!r} both map to the series {key!r}; say which one is "
                    f"{key!r} with --map, e.g. --map {other}={key} --map {src}={_suggest(src)}"
                )
            self._owner[key] = src
            if how == "renamed" and key != src:
                self.renamed[src] = key
            elif how == "cleaned":
                self.cleaned[src] = key
            elif how == "kept":
                self.kept.append(src)
        else:
            self.skipped[src] = how
        self._cache[src] = key
        return key

    def _resolve(self, src: str) -> tuple[str | None, str]:
        if src in self.explicit:
            key = self.explicit[src]
            return (key, "renamed") if key is not None else (None, "skipped by --map")
        low = src.strip().lower()
        if src in DEFAULT_NAMES or low in DEFAULT_NAMES:
            return DEFAULT_NAMES.get(src, DEFAULT_NAMES.get(low)), "renamed"
        if low in SKIPPED:
            return None, "a clock time, not a training signal"
        m = _OTHER_RANK.match(src)
        if m:
            return None, f"rank {m.group(1)}'s series (rank 0 is imported)"
        base = src.removeprefix("stabmon/")
        m = LAYER_PATTERN.match(base)
        if m and match_layer_key(base) is None:
            return layer_key(int(m.group(1)), m.group(2).lower(), m.group(3)), "renamed"
        if is_valid_key(base):
            return base, ("kept" if base == src else "renamed")
        cleaned = _suggest(base)
        if is_valid_key(cleaned):
            return cleaned, "cleaned"
        return None, "no valid series key can be made of it; name one with --map"

    def notes(self) -> list[str]:
        """One sentence per kind of change, for the import report."""
        out = []
        if self.renamed:
            out.append("renamed: " + ", ".join(f"{s} -> {k}" for s, k in self.renamed.items()))
        if self.cleaned:
            out.append(
                "kept under a cleaned-up key: " + ", ".join(f"{s} -> {k}" for s, k in self.cleaned.items())
            )
        if self.kept:
            out.append("kept under their own names: " + ", ".join(self.kept))
        for src, why in self.skipped.items():
            out.append(f"skipped {src!r}: {why}")
        return out


def _suggest(src: str) -> str:
    """A valid key made of ``src`` when one can be: ``/`` and spaces become separators."""
    text = src.strip().replace("/", ".")
    text = _CLEAN.sub("_", text)
    text = re.sub(r"\.{2,}", ".", text).strip(".")
    text = ".".join(p if p else "_" for p in text.split("."))
    if text and not (text[0].isalpha() or text[0] == "_"):
        text = "_" + text
    return text
