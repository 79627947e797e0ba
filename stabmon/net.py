"""Loopback helpers shared by the CLI, the benchmarks and the tests."""

from __future__ import annotations

import socket


def free_port(preferred: int = 0) -> int:
    """``preferred`` if nothing listens there on 127.0.0.1, else any free loopback port
    (``preferred=0``: any free port)."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")
