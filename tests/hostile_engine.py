"""Hostile engines and a control-plane probe, for tests of what one node can do to a router.

:func:`scripted_engine` is a :class:`~tests.raw_server.RawServer` whose every
connection reads one request and runs a test-written script on the socket
(any bytes, any pace). :class:`ControlProbe` watches a router's control
listener from a thread while a test attacks it: the worst ``/healthz``
latency, and heartbeats that keep a node registered (so a stalled worker
shows up as an expired node). :func:`worker_rss` reads a router worker's
resident memory.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import requests

from tests.raw_server import RawServer
from tests.support import ROUTER_TOKEN, register_node


def completion_event(text: str = "a", finish: str | None = None) -> bytes:
    """One ``/v1/completions`` stream chunk as an engine sends it."""
    doc = {
        "id": "cmpl-hostile",
        "object": "text_completion",
        "created": 1,
        "model": "hostile",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def head(status: str = "200 OK", content_type: str = "text/event-stream", **extra: str) -> bytes:
    """A response head; without ``Content_Length`` in ``extra`` the body runs until close."""
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Engine:
    """A scripted engine's URL and what it managed to send."""

    server: RawServer
    sent: list[int] = field(default_factory=list)  # bytes sent per connection, once it ended

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@contextlib.contextmanager
def scripted_engine(script: Callable[[socket.socket], int]) -> Iterator[Engine]:
    """An engine answering every request with ``script(conn)`` (which returns bytes sent).

    ``GET /health`` gets a plain 200 so registrations and probes pass.
    """
    engine: Engine

    def handler(conn: socket.socket, _index: int) -> None:
        request = engine.server.read_request(conn)
        if request is None:
            return
        if request.startswith(b"GET /health"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            return
        sent = 0
        try:
            sent = script(conn)
        finally:
            engine.sent.append(sent)

    engine = Engine(RawServer(handler))
    try:
        yield engine
    finally:
        engine.server.close()


def send_until_refused(conn: socket.socket, data: bytes, total: int) -> int:
    """Send ``data`` repeatedly, ``total`` bytes at most; stop when the peer goes. Bytes sent."""
    sent = 0
    try:
        while sent < total:
            conn.sendall(data)
            sent += len(data)
    except OSError:
        pass
    return sent


def drip(conn: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> int:
    """Send ``data`` one byte per ``every_s`` until done, refused or ``stop``. Bytes sent."""
    sent = 0
    for byte in data:
        if stop.wait(every_s):
            break
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
    return sent


class ControlProbe:
    """Polls ``/healthz`` on a control listener and heartbeats a node, from a thread.

    ``worst_s``: the slowest ``/healthz`` answer (a failed one counts as its
    timeout); ``beat_failures``: heartbeats the router did not accept.
    """

    def __init__(
        self, control_url: str, node_id: str, engine_url: str, model: str, every_s: float = 0.05
    ) -> None:
        self.control_url = control_url
        self.node = (node_id, engine_url, model)
        self.every_s = every_s
        self.worst_s = 0.0
        self.checks = 0
        self.beat_failures = 0
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ControlProbe:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _beat(self) -> None:
        node_id, url, model = self.node
        register_node(self.control_url, ROUTER_TOKEN, node_id, url, model)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = requests.get(f"{self.control_url}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                ok = False
            took = time.monotonic() - started if ok else 5.0
            self.worst_s = max(self.worst_s, took)
            self.checks += 1
            if time.monotonic() - last_beat > 0.3:
                last_beat = time.monotonic()
                try:
                    self._beat()
                    self.beats += 1
                except Exception:
                    self.beat_failures += 1
            self._stop.wait(self.every_s)


def worker_rss(router_pid: int) -> int:
    """Resident bytes of the router's largest gunicorn worker (a leaf of its process tree)."""
    parent = psutil.Process(router_pid)
    leaves = [p for p in parent.children(recursive=True) if not p.children()]
    return max(p.memory_info().rss for p in leaves)
