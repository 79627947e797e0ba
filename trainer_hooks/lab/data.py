"""Byte-level training data: a memory-mapped corpus, a deterministic split and seeded batches.

Any file is a byte corpus (vocabulary 256, no tokenizer). ``--data FILE`` memory-maps the file
as it is; ``--data DIR`` concatenates the directory's text files (recursively, sorted by path,
files that are not valid UTF-8 skipped) once into a cached ``.bin`` that is then memory-mapped.
Without ``--data``, the built-in corpus is used, which needs no download: the Python standard
library's own ``.py`` sources, found through ``sysconfig.get_paths()["stdlib"]``, concatenated
in sorted path order (``site-packages``/``dist-packages`` excluded) and truncated at
`DEFAULT_CORPUS_CAP` bytes (20 MB; CPython 3.11's stdlib holds ~31 MB of ``.py``). It is
deterministic for a given Python version and cached under ``$STABMON_CACHE`` or
``~/.cache/stabmon/``. The last `val_fraction` (5%) of the bytes is the validation split.
`ByteBatches` draws training batches from a seeded ``torch.Generator`` whose state is part of
a checkpoint, so a resumed run sees exactly the batches an uninterrupted one would; validation
batches come from a fixed seed, so every evaluation scores the same text.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import torch

DEFAULT_CORPUS_CAP = 20_000_000
"""Bytes of standard-library source in the built-in corpus."""
VAL_SEED = 1234
"""Seed of the validation batches: the same batches at every evaluation and in every run."""


def cache_dir() -> Path:
    """``$STABMON_CACHE``, else ``~/.cache/stabmon``."""
    return Path(os.environ.get("STABMON_CACHE") or Path.home() / ".cache" / "stabmon")


def _write_atomic(target: Path, chunks) -> Path:
    """Write byte chunks to ``target`` via a temporary file, so concurrent runs building the same
    cache never see a half-written corpus."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def stdlib_sources() -> list[Path]:
    """The standard library's ``.py`` files, in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages"}
    return sorted(p for p in root.rglob("*.py") if p.is_file() and not skip & set(p.parts))


def default_corpus(cap: int = DEFAULT_CORPUS_CAP) -> Path:
    """Path of the built-in corpus's ``.bin``, building it on first use."""
    v = sys.version_info
    target = cache_dir() / f"stdlib-py{v.major}{v.minor}-{cap}.bin"
    if target.exists():
        return target

    def chunks():
        left = cap
        for path in stdlib_sources():
            if left <= 0:
                return
            data = path.read_bytes()[:left]
            left -= len(data)
            yield data

    return _write_atomic(target, chunks())


def _text_files(root: Path) -> list[Path]:
    files = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        try:
            p.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        files.append(p)
    return files


def directory_corpus(root: Path) -> Path:
    """Concatenate a directory's text files into a cached ``.bin``, keyed by their names, sizes
    and modification times (a changed file rebuilds it)."""
    files = _text_files(root)
    if not files:
        raise ValueError(f"no UTF-8 text files under {root}")
    h = hashlib.sha256(str(root.resolve()).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    target = cache_dir() / f"dir-{h.hexdigest()[:16]}.bin"
    if target.exists():
        return target
    return _write_atomic(target, (p.read_bytes() for p in files))


def resolve_corpus(data: str | os.PathLike | None) -> Path:
    """The byte file to memory-map for ``--data``: the built-in corpus when None."""
    if data is None:
        return default_corpus()
    path = Path(data).expanduser()
    if path.is_dir():
        return directory_corpus(path)
    if path.is_file():
        return path
    raise FileNotFoundError(f"--data {data}: no such file or directory")


class ByteCorpus:
    """A memory-mapped byte file split into train (first 95%) and validation (last 5%)."""

    def __init__(self, data: str | os.PathLike | None, block_size: int, val_fraction: float = 0.05) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.path = resolve_corpus(data)
        self.block_size = block_size
        n = self.path.stat().st_size
        n_val = max(int(n * val_fraction), block_size + 1)
        if n - n_val < block_size + 1:
            raise ValueError(
                f"corpus {self.path} has {n} bytes: too small for block_size {block_size} "
                f"(need at least {2 * (block_size + 1)} bytes)"
            )
        data_map = np.memmap(self.path, dtype=np.uint8, mode="r")
        self.train = data_map[: n - n_val]
        self.val = data_map[n - n_val :]
        self._unigram: float | None = None

    def __len__(self) -> int:
        return len(self.train) + len(self.val)

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training split's byte distribution: the loss of the best
        predictor that ignores context, where high-LR runs stall (see `stabmon.divergence`)."""
        if self._unigram is None:
            counts = np.zeros(256, dtype=np.int64)
            for i in range(0, len(self.train), 1 << 24):  # chunks bound the temporary memory
                counts += np.bincount(self.train[i : i + (1 << 24)], minlength=256)
            p = counts[counts > 0] / counts.sum()
            self._unigram = float(-(p * np.log(p)).sum())
        return self._unigram

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def batch(
        self, split: str, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of ``block_size + 1`` bytes: inputs (B, T) and next-byte targets (B, T)."""
        data = self.split(split)
        T = self.block_size
        ix = torch.randint(len(data) - T, (batch_size,), generator=generator).tolist()
        windows = np.stack([data[i : i + T + 1] for i in ix]).astype(np.int64)  # (B, T+1)
        xy = torch.from_numpy(windows)
        x, y = xy[:, :-1], xy[:, 1:]
        if torch.device(device).type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous().to(device), y.contiguous().to(device)


class ByteBatches:
    """Seeded training batches; `state_dict()` captures the sampler so a resume is exact."""

    def __init__(self, corpus: ByteCorpus, batch_size: int, seed: int, device: str | torch.device = "cpu"):
        self.corpus = corpus
        self.batch_size = batch_size
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.corpus.batch("train", self.batch_size, self.generator, self.device)

    def val_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same ``n`` validation batches every time."""
        g = torch.Generator().manual_seed(VAL_SEED)
        return [self.corpus.batch("val", self.batch_size, g, self.device) for _ in range(n)]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
