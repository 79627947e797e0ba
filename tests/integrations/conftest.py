"""Integration tests train real framework loops on CPU with one intra-op thread: deterministic,
and polite to the other test runs sharing the machine's two cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
