"""A minimal, real HTTP collector for client tests: the three ingest endpoints over
``http.server`` on 127.0.0.1, an in-memory store that dedups batches by ``batch_id``, and
switches to misbehave on purpose (answer 503 with ``Retry-After``, drop connections, hang,
lose the answer after storing, reject batches, stop and restart on the same port).
Payloads are validated with the real wire schemas, so a client bug shows up as a 422."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from stabmon.wire import PointsIn, RunCreate, RunUpdate, decode_value

TOKEN = "s3cret-token"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, fake: FakeCollector) -> None:
        self.fake = fake
        self.conns: set[socket.socket] = set()
        super().__init__(addr, handler)

    def get_request(self):
        sock, addr = super().get_request()
        self.conns.add(sock)
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real collector
    disable_nagle_algorithm = True  # headers and body go in two writes: avoid 40 ms delayed ACKs

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length", 0))
        return json.loads(self.rfile.read(n) or b"null")

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.fake.handle(self, "POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self.server.fake.handle(self, "PATCH")


class FakeCollector:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, dict] = {}
        self.batches: dict[str, list[dict]] = {}  # batch_id -> points, in arrival order
        self.order: list[str] = []
        self.requests = 0
        self.auth_headers: list[str] = []
        self.updates: list[dict] = []
        self.points_before_update: list[int] = []  # points stored when each update arrived
        # Misbehaviour switches (tests flip them at any time).
        self.fail_status: int | None = None
        self.fail_next = 0
        self.retry_after: str | None = None
        self.drop = False
        self.lose_answer_next = 0
        self.hang = threading.Event()  # set = requests block until released
        self.release = threading.Event()
        self.reject: Callable[[dict], str | None] | None = None
        self.alerts: list[dict] = []
        self.max_body: int | None = None  # answer 413 to larger request bodies
        self.port = 0
        self._srv: _Server | None = None
        self.start()

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._srv = _Server(("127.0.0.1", self.port), _Handler, self)
        self.port = self._srv.server_address[1]
        threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        """Go down hard: stop listening and cut every open (keep-alive) connection."""
        srv, self._srv = self._srv, None
        if srv is None:
            return
        self.release.set()
        srv.shutdown()
        srv.server_close()
        for c in list(srv.conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self.release.clear()

    # -- what the tests check -------------------------------------------------------------
    def points(self) -> list[dict]:
        with self.lock:
            return [p for bid in self.order for p in self.batches[bid]]

    def series(self) -> dict[tuple[str, int, int], float]:
        """(key, step, rank) -> float; fails the test if any point was stored twice."""
        out: dict[tuple[str, int, int], float] = {}
        for p in self.points():
            for k, v in p["values"].items():
                key = (k, p["step"], p.get("rank", 0))
                assert key not in out, f"stored twice: {key}"
                out[key] = decode_value(v)
        return out

    # -- request handling (handler threads) -----------------------------------------------
    def handle(self, h: _Handler, method: str) -> None:
        with self.lock:
            self.requests += 1
            self.auth_headers.append(h.headers.get("Authorization", ""))
        if self.max_body is not None and int(h.headers.get("Content-Length", 0)) > self.max_body:
            h._body()
            return h._send(413, {"detail": f"limit: body over {self.max_body} bytes"})
        body = h._body()
        if self.hang.is_set():
            self.release.wait(30)
        if self.drop:
            return h._drop()
        if self.fail_status is not None or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            hdr = {"Retry-After": self.retry_after} if self.retry_after else None
            return h._send(self.fail_status or 503, {"detail": "unavailable"}, hdr)
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return h._send(401, {"detail": "bad token"})
        parts = h.path.strip("/").split("/")  # api v1 runs [id [points]]
        try:
            if method == "POST" and parts == ["api", "v1", "runs"]:
                rc = RunCreate.model_validate(body)
                with self.lock:
                    run = self.runs.setdefault(rc.id, rc.model_dump())
                return h._send(201, {"id": rc.id, **{k: run[k] for k in ("name", "config")}})
            if parts[:3] != ["api", "v1", "runs"] or len(parts) < 4 or parts[3] not in self.runs:
                return h._send(404, {"detail": "run not found"})
            if method == "PATCH" and len(parts) == 4:
                update = RunUpdate.model_validate(body).model_dump(exclude_none=True)
                with self.lock:
                    self.updates.append(update)
                    self.points_before_update.append(sum(len(self.batches[b]) for b in self.order))
                return h._send(200, {"id": parts[3]})
            if method == "POST" and parts[4:] == ["points"]:
                return self._ingest(h, parts[3], body)
        except ValidationError as e:
            return h._send(422, {"detail": json.loads(e.json())})
        h._send(404, {"detail": "no such endpoint"})

    def _ingest(self, h: _Handler, run_id: str, body: dict) -> None:
        PointsIn.model_validate(body)
        if self.reject is not None and (why := self.reject(body)):
            return h._send(422, {"detail": why})
        bid = body["batch_id"]
        with self.lock:
            dup = bid in self.batches
            if not dup:
                self.batches[bid] = body["points"]
                self.order.append(bid)
        if self.lose_answer_next > 0:  # stored, but the client never hears about it
            self.lose_answer_next -= 1
            return h._drop()
        answer = {"batch_id": bid, "accepted": 0 if dup else len(body["points"]), "duplicate": dup}
        h._send(200, {**answer, "alerts": self.alerts})


def make_alert(alert_id: int, run_id: str, severity: str = "warning", status: str = "open") -> dict:
    now = datetime.now(timezone.utc).isoformat()
    return {
        "id": alert_id,
        "run_id": run_id,
        "rule": "norm_growth",
        "severity": severity,
        "status": status,
        "step": 10,
        "last_step": 12,
        "message": "layer.0.fc2.l2_mean grew 40x in 25 steps",
        "evidence": {},
        "created_at": now,
        "updated_at": now,
    }


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
