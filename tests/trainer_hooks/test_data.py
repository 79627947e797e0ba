"""Byte corpora: file and directory inputs, the cached built-in corpus, the deterministic split,
and seeded batches."""

import numpy as np
import pytest
import torch

from trainer_hooks.lab import data as data_mod
from trainer_hooks.lab.data import ByteBatches, ByteCorpus, default_corpus, resolve_corpus


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STABMON_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    return p


def test_file_split_is_the_last_five_percent(text_file):
    c = ByteCorpus(text_file, block_size=16)
    raw = text_file.read_bytes()
    n_val = int(len(raw) * 0.05)
    assert len(c) == len(raw)
    assert bytes(c.val) == raw[-n_val:]
    assert bytes(c.train) == raw[:-n_val]
    assert isinstance(c.train, np.memmap)


def test_batches_are_next_byte_windows(text_file):
    c = ByteCorpus(text_file, block_size=16)
    x, y = c.batch("train", 5, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.long
    # The corpus is bytes 0..255 repeated, so the next byte is (b + 1) % 256.
    assert torch.equal(y, (x + 1) % 256)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_val_batches_stay_in_the_val_split(tmp_path):
    p = tmp_path / "c.bin"
    p.write_bytes(b"a" * 9500 + b"b" * 500)
    c = ByteCorpus(p, block_size=8)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, _ = c.batch("val", 4, g)
        assert (x == ord("b")).all()
        x, _ = c.batch("train", 4, g)
        assert (x == ord("a")).all()


def test_sampling_is_deterministic_and_resumable(text_file):
    c = ByteCorpus(text_file, block_size=16)
    a, b = ByteBatches(c, 4, seed=7), ByteBatches(c, 4, seed=7)
    for _ in range(3):
        assert torch.equal(a.next()[0], b.next()[0])
    state = a.state_dict()
    expected = [a.next()[0] for _ in range(3)]
    fresh = ByteBatches(c, 4, seed=999)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.next()[0], e) for e in expected)
    assert not torch.equal(ByteBatches(c, 4, seed=8).next()[0], ByteBatches(c, 4, seed=7).next()[0])


def test_val_batches_are_fixed(text_file):
    c = ByteCorpus(text_file, block_size=16)
    s = ByteBatches(c, 4, seed=0)
    first = s.val_batches(2)
    s.next()
    again = s.val_batches(2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert torch.equal(ByteBatches(c, 4, seed=5).val_batches(1)[0][0], first[0][0])


def test_directory_corpus_concatenates_sorted_text_files(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second\n")
    (d / "a.txt").write_text("first\n")
    (d / "sub" / "c.md").write_text("third\n")
    (d / "blob.bin").write_bytes(b"\xff\xfe\x00\x81")  # not UTF-8: skipped
    (d / ".hidden").write_text("hidden\n")
    path = resolve_corpus(d)
    assert path.read_bytes() == b"first\nsecond\nthird\n"
    assert resolve_corpus(d) == path  # cached
    (d / "a.txt").write_text("changed first\n")
    assert resolve_corpus(d).read_bytes().startswith(b"changed first\n")


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_corpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no UTF-8 text files"):
        resolve_corpus(tmp_path / "empty")
    small = tmp_path / "small.txt"
    small.write_bytes(b"x" * 40)
    with pytest.raises(ValueError, match="too small"):
        ByteCorpus(small, block_size=32)
    with pytest.raises(ValueError, match="split"):
        ByteCorpus(tmp_path / "small.txt", block_size=4).split("test")


def test_default_corpus_is_stdlib_source_capped_and_cached(monkeypatch):
    sources = data_mod.stdlib_sources()
    assert sources == sorted(sources)
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in sources)
    calls = []
    monkeypatch.setattr(data_mod, "stdlib_sources", lambda: calls.append(1) or sources)
    path = default_corpus(cap=200_000)
    raw = path.read_bytes()
    expected, it = b"", iter(sources)
    while len(expected) < 200_000:  # the sorted sources, concatenated, cut at the cap
        expected += next(it).read_bytes()
    assert raw == expected[:200_000]
    assert default_corpus(cap=200_000) == path and len(calls) == 1  # built once, then cached
    assert path.parent == data_mod.cache_dir()
