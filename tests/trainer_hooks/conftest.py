"""Training-side tests run on CPU with one intra-op thread: deterministic, and polite to the
other tests sharing the machine's two cores."""

import pytest
import torch

from trainer_hooks.lab.data import stdlib_sources


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~200 KB of Python source: enough for tiny runs, no cache involved (a test module may
    define its own ``corpus``)."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    chunks, size = [], 0
    for src in stdlib_sources():
        chunks.append(src.read_bytes())
        size += len(chunks[-1])
        if size > 200_000:
            break
    path.write_bytes(b"".join(chunks))
    return str(path)
