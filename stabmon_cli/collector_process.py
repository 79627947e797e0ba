"""A collector as a child process (``python -m stabmon_cli serve``), started and waited for.

The demo, the benchmarks and the tests all need "start a collector on a free loopback port and
wait until it answers"; they call this one implementation, so a change to how the server
starts, what "ready" means or how a failed start is reported is made once. A collector is
ready when its process is alive, ``/readyz`` answers 200 (the database is reachable) and, when
its token is known, the token is accepted: that last check proves the answer came from our
process and not from another one that took the port in the meantime.

A :class:`Collector` can be killed (SIGKILL, no shutdown handler runs) and started again on the
same database and port, which is what the fault tests need; each start writes its own log.
Used as a context manager it is stopped on exit, so a fixture of any scope is
``with start_collector(db) as c: yield c``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from stabmon import net

__all__ = ["Collector", "CollectorStartError", "PortTaken", "start_collector", "wait_until"]


class CollectorStartError(RuntimeError):
    """The collector exited or did not answer in time; the message carries its log."""


class PortTaken(CollectorStartError):
    """Someone else bound the port between choosing it and the server binding it."""


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``cond`` until it is true or ``timeout`` seconds have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def sqlite_url(db: str | Path) -> str:
    """A database URL: a path is an SQLite file, a string containing ``://`` is used as is."""
    return db if isinstance(db, str) and "://" in db else f"sqlite:///{Path(db).resolve()}"


class Collector:
    """One ``stabmon serve`` process on ``db`` (a URL, or a path to an SQLite file).

    ``port=0`` picks a free loopback port once, so restarts reuse it. ``token`` is the token
    clients use; when not given it is the embedded server's local token file (``<db>.token``,
    SQLite only), read once the server has written it. ``args`` are passed to ``serve`` as
    they are (``--workers``, ...); ``env`` is added to this process's environment;
    ``command`` replaces the whole ``serve`` command line (it must serve on ``port``).
    """

    def __init__(
        self,
        db: str | Path,
        *,
        port: int = 0,
        token: str | None = None,
        workdir: str | Path | None = None,
        log_dir: str | Path | None = None,
        log_name: str = "collector",
        log_level: str | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.db = sqlite_url(db)
        self.port = port or net.free_port()
        self.token = token
        self.workdir = Path(workdir) if workdir is not None else None
        sqlite_file = self._sqlite_file()
        self.token_file = sqlite_file.with_name(sqlite_file.name + ".token") if sqlite_file else None
        default_dir = self.workdir or (sqlite_file.parent if sqlite_file else Path.cwd())
        self.log_dir = Path(log_dir) if log_dir is not None else default_dir
        self.log_name = log_name
        self.cmd = [sys.executable, "-m", "stabmon_cli", "serve", "--db", self.db]
        self.cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.cmd += ["--log-level", log_level] if log_level else []
        self.cmd += list(args)
        if command is not None:  # another way to serve (the container's entrypoint script)
            self.cmd = list(command)
        # The local token lives next to the database: a token file configured for the
        # caller's own collector must not redirect it.
        base = {k: v for k, v in os.environ.items() if k != "STABMON_TOKEN_FILE"}
        self.env = {**base, "STABMON_DB": self.db, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.logs: list[Path] = []

    def _sqlite_file(self) -> Path | None:
        prefix = "sqlite:///"
        if not self.db.startswith(prefix) or ":memory:" in self.db:
            return None
        return Path(self.db[len(prefix) :].split("?", 1)[0])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The current (latest) start's log."""
        return self.logs[-1]

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def client(self, token: str | None = None):  # noqa: ANN201 - httpx is imported lazily
        """An ``httpx.Client`` on the collector's root URL with the token's header."""
        import httpx

        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=30.0)

    def start(self, timeout: float = 90.0, require_token: bool = False) -> Collector:
        """Start the process and wait until it is ready (see the module docstring). With
        ``require_token`` it is ready only once its token is known and accepted."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        n = len(self.logs)
        log = self.log_dir / (f"{self.log_name}.log" if n == 0 else f"{self.log_name}-{n}.log")
        self.logs.append(log)
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                self.cmd, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.wait_ready(timeout, require_token)
        return self

    def known_token(self) -> str | None:
        """The token this collector accepts: given, or the one it wrote next to its SQLite file."""
        if self.token is None and self.token_file is not None and self.token_file.exists():
            self.token = self.token_file.read_text().strip() or None
        return self.token

    def wait_ready(self, timeout: float, require_token: bool = False) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self.log_text(last=True)
                if "address already in use" in text.lower():
                    raise PortTaken(text)
                raise CollectorStartError(
                    f"the collector exited with code {self.process.returncode}:\n{text}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    token = self.known_token()
                    if token is None and not require_token:
                        return
                    # Our token answering proves it is our collector on that port.
                    if token is not None:
                        r = httpx.get(f"{self.url}/api/v1/runs", headers=self.headers(token), timeout=2.0)
                        if r.status_code == 200:
                            return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise CollectorStartError(
            f"the collector did not answer within {timeout:.0f} s:\n{self.log_text(last=True)[-3000:]}"
        )

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, open transactions die with the process."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a graceful shutdown), SIGKILL after ``timeout`` seconds."""
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self, last: bool = False) -> str:
        """Every start's log in order (``last``: the latest start's only)."""
        paths = self.logs[-1:] if last else self.logs
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())


def start_collector(
    db: str | Path,
    port: int = 0,
    timeout: float = 90.0,
    *,
    preferred_port: int = 0,
    require_token: bool = False,
    **kwargs,
) -> Collector:
    """A started :class:`Collector` (keyword arguments as its constructor's). With ``port=0``
    the port is ``preferred_port`` if free, else any free one, and a port taken in the
    meantime by someone else is retried on another one. A given ``token`` must be accepted."""
    require_token = require_token or kwargs.get("token") is not None
    attempts = 1 if port else 3
    for attempt in range(attempts):
        collector = Collector(db, port=port or net.free_port(preferred_port), **kwargs)
        try:
            return collector.start(timeout, require_token=require_token)
        except PortTaken:
            if attempt == attempts - 1:
                raise CollectorStartError(
                    f"could not bind a port for the collector after {attempts} tries"
                ) from None
    raise AssertionError("unreachable")
