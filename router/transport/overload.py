"""Connection slots under pressure: idle connections give way, warnings stay few.

A gevent worker serves at most ``server.worker_connections`` connections per
listener; the rest wait in the listen backlog. A client that sends one
request and then keeps its connection open holds a slot for
``server.keepalive_s`` (75 s) doing nothing, so a few thousand of them
starve every other client. As Envoy's overload manager does
(``reduce_timeouts`` on a ``scaled`` trigger), :class:`IdleReaper` shortens
the idle timeout as the listener fills: ``server.keepalive_s`` below
``server.overload_start_percent`` of the slots, then linearly down to
``server.keepalive_min_s`` at ``server.overload_saturation_percent``.
"Idle" is a connection between requests, or one that has not sent a byte
since it was accepted; a request in progress is never cut.

:class:`LogThrottle` keeps a flood of refused connections or requests from
becoming a flood of log lines: one line per key per interval, with the count
of the lines it stood for.

Both are I/O-free with an injected clock; :mod:`spotrelay.router.transport.worker`
runs them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


class Idleable(Protocol):
    """What the reaper needs from a connection (a :class:`~.httpguard.GuardedSocket`)."""

    waiting: bool  # between requests, or nothing received since the accept
    idle_since: float


@dataclass(frozen=True)
class IdlePolicy:
    """``server.keepalive_s`` scaled down between two fill levels of the listener."""

    keepalive_s: float = 75.0
    keepalive_min_s: float = 1.0
    start: float = 0.5  # fraction of worker_connections
    saturation: float = 0.9

    def idle_timeout(self, open_conns: int, capacity: int) -> float:
        """The idle timeout with ``open_conns`` of ``capacity`` slots taken."""
        fill = open_conns / capacity if capacity > 0 else 0.0
        if fill < self.start:
            return self.keepalive_s
        low = min(self.keepalive_min_s, self.keepalive_s)
        if fill >= self.saturation:
            return low
        scale = (fill - self.start) / (self.saturation - self.start)
        return self.keepalive_s - (self.keepalive_s - low) * scale


class IdleReaper:
    """One listener's open connections; which idle ones to close at the current fill."""

    def __init__(
        self, policy: IdlePolicy, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.capacity = capacity
        self.clock = clock
        self._open: set[Idleable] = set()
        self._lock = threading.Lock()

    def add(self, conn: Idleable) -> None:
        with self._lock:
            self._open.add(conn)

    def discard(self, conn: Idleable) -> None:
        with self._lock:
            self._open.discard(conn)

    def __len__(self) -> int:
        return len(self._open)

    def due(self) -> list[Idleable]:
        """Idle connections past the scaled timeout, oldest first; none below the start level."""
        open_conns = len(self._open)
        if open_conns < self.policy.start * self.capacity:
            return []
        timeout = self.policy.idle_timeout(open_conns, self.capacity)
        if timeout >= self.policy.keepalive_s:
            return []
        horizon = self.clock() - timeout
        with self._lock:
            idle = [c for c in self._open if c.waiting and c.idle_since <= horizon]
        return sorted(idle, key=lambda c: c.idle_since)


class LogThrottle:
    """At most one line per key per ``interval_s``; the next one says how many it stood for."""

    def __init__(
        self,
        interval_s: float = 10.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self.clock = clock
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}
        self._lock = threading.Lock()

    def admit(self, key: object) -> int | None:
        """None: stay quiet; else log now, mentioning this many held-back lines (may be 0)."""
        now = self.clock()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            if len(self._last) >= self.max_keys:
                self._last.clear()
                self._held.clear()
            self._last[key] = now
            return self._held.pop(key, 0)


def held_note(held: int, interval_s: float) -> str:
    """The suffix for a throttled line: `` (+N like it in the last 10s)`` or nothing."""
    return f" (+{held} like it in the last {interval_s:g}s)" if held else ""


def closable(conns: Iterable[Idleable]) -> list[Idleable]:
    """Those still idle now (one may have started a request since it was picked)."""
    return [c for c in conns if c.waiting]
