"""Noticing that a client left while its request waits on a node, and aborting that work.

A non-streaming request gives the client nothing to write to until the node
has finished, so the relay never finds out that the client is gone: the
engine would go on generating (tens of seconds) for nobody. While an attempt
waits on a node, :class:`ClientWatch` polls the client's socket every
``tick_s`` (an orderly close or a reset is visible without reading the
request's bytes) and, when the client has left, shuts the node connection
down: the engine sees the request aborted and frees its slot, and the proxy
records the outcome as ``client_disconnect``.

One sweeper for all waiting requests (like :class:`~.upstream.IdleWatchdog`):
a timer per request would cost more than the check.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from spotrelay.core.ticker import Ticker

from ..transport.httpguard import client_gone, clients_gone


class ClientLink:
    """The client side of one request: its socket and whether it has gone."""

    __slots__ = ("_abort", "_lock", "_upstream", "depth", "gone", "interrupt", "sock")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.gone = False
        self._upstream: socket.socket | None = None
        self._abort = False
        self._lock = threading.Lock()
        self.depth = 0  # nested watching() blocks open on this link
        # Also called on departure: ends a stream the router reads for this client
        # (a non-streaming answer assembled from a stream, router/stream/assembly.py).
        self.interrupt: Callable[[], None] | None = None

    def check(self, is_gone: Callable[[Any], bool] = client_gone) -> bool:
        """Look at the socket now; True once the client has left (sticky)."""
        if not self.gone and is_gone(self.sock):
            self.gone = True
        return self.gone

    def attach(self, upstream: socket.socket) -> None:
        """The node connection of the current attempt (``h1.Pool.request(on_connection=)``)."""
        with self._lock:
            self._upstream = upstream
            abort = self._abort
        if abort:
            _shutdown(upstream)

    def abort_upstream(self) -> None:
        """Shut the current attempt's node connection down (now, or as soon as it exists)."""
        with self._lock:
            self._abort = True
            upstream = self._upstream
        if upstream is not None:
            _shutdown(upstream)
        if self.interrupt is not None:
            self.interrupt()

    def detach(self) -> None:
        with self._lock:
            self._upstream = None
            self._abort = False


class ClientWatch(Ticker):
    """Sweeps the clients of requests waiting on nodes; aborts those whose client left."""

    name = "client-watch"

    def __init__(self, tick_s: float = 0.25, is_gone: Callable[[Any], bool] | None = None) -> None:
        super().__init__(tick_s)
        self.is_gone = is_gone
        self._watched: set[ClientLink] = set()

    def watching(
        self, link: ClientLink | None, interrupt: Callable[[], None] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """While the block runs, a departure of ``link``'s client aborts its node connection
        (and calls ``interrupt``). Blocks may nest: the link stays watched until the
        outermost one ends."""
        if link is None:
            return _UNWATCHED
        return _Watching(self._watched, link, interrupt)

    def sweep(self) -> list[ClientLink]:
        """Check every watched client once; returns those found gone (their upstream aborted)."""
        links = list(self._watched)
        if self.is_gone is not None:
            flags = [self.is_gone(link.sock) for link in links]
        else:  # one poll() for every watched client
            flags = clients_gone([link.sock for link in links])
        gone = [link for link, flag in zip(links, flags, strict=True) if flag or link.gone]
        for link in gone:
            link.gone = True
            self._watched.discard(link)
            link.abort_upstream()
        return gone

    def __len__(self) -> int:
        return len(self._watched)

    def tick(self) -> None:
        if self._watched:
            started = time.monotonic()
            self.sweep()
            # Thousands of waiting requests: never spin, leave the loop room to breathe.
            if time.monotonic() - started > self.tick_s:
                self.pause(self.tick_s)


class _Watching:
    """The block of :meth:`ClientWatch.watching`: a class, not a generator, because every
    attempt opens one (a generator-based context manager costs about five more
    Python calls)."""

    __slots__ = ("_interrupt", "_outer", "_watched", "link")

    def __init__(
        self, watched: set[ClientLink], link: ClientLink, interrupt: Callable[[], None] | None
    ) -> None:
        self._watched, self.link, self._interrupt = watched, link, interrupt
        self._outer: Callable[[], None] | None = None

    def __enter__(self) -> None:
        link = self.link
        self._outer = link.interrupt
        if self._interrupt is not None:
            link.interrupt = self._interrupt
        link.depth += 1
        self._watched.add(link)

    def __exit__(self, *exc_info: object) -> None:
        link = self.link
        link.depth -= 1
        link.interrupt = self._outer
        link.detach()
        if link.depth == 0:
            self._watched.discard(link)


_UNWATCHED: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
