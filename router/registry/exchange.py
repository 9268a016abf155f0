"""One upstream exchange open on a node, and how the router cuts it when the node is lost.

Every failover path used to wait for a socket to close. A node that goes
quiet (a frozen engine, a vanished host, a partition) closes nothing, so a
request on it waited for its timeout (``timeouts.first_byte_s``,
``timeouts.stream_idle_s``) long after the registry had dropped the node.
Now every attempt registers an :class:`Exchange` with its node
(:meth:`~spotrelay.router.registry.state.Registry.acquire`); when the node is lost
(expired, deleted, reported ``unhealthy``, ejected, found frozen) the proxy
cuts each of them: the socket is shut down, so the read blocked on it fails
at once, and the reader sees :attr:`Exchange.reason` and treats the failure
as ``node_lost`` (a retry before the answer started, a resume after).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Exchange:
    """The socket of one attempt on a node, and why it was cut (None: not cut)."""

    __slots__ = ("_lock", "_sock", "node_id", "reason")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.reason: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        """The attempt's connection (``h1.Pool.request(on_connection=)``); cut at once if
        the node was lost before it existed."""
        with self._lock:
            self._sock = sock
            cut = self.reason is not None
        if cut:
            _shutdown(sock)

    def cut(self, reason: str) -> bool:
        """End the exchange now; the first reason sticks. True when this call cut it."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            sock = self._sock
        if sock is not None:
            _shutdown(sock)
        return True


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
