"""A scripted raw-socket HTTP server on loopback, for tests of the router's node client.

Each connection is handed to a test-written handler, so a test can send any
bytes at any pace (odd framing, stalls, resets) that no real engine would.
Shared by ``test_router_h1.py`` and ``test_router_proxy.py``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class RawServer:
    """Accepts connections; ``handler(conn, index)`` scripts each one (in its own thread)."""

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index = self.connections
            self.connections += 1
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn, index)

    def read_request(self, conn: socket.socket) -> bytes | None:
        """Read one request (head and sized body) and record it; its head, or None at EOF."""
        data = b""
        while b"\r\n\r\n" not in data:
            part = conn.recv(65536)
            if not part:
                return None
            data += part
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += conn.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + rest)
        return head

    def close(self) -> None:
        """Stop accepting (connections already handed to a handler run on)."""
        self.sock.close()
