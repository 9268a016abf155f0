"""One background loop per periodic job: a daemon thread calling ``tick()`` until stopped.

The router's upkeep (TTL expiry and probes, the idle-stream watchdog, the
client-disconnect sweep, the metrics snapshot) and the agent's loops (IMDS
pollers, router heartbeats, the engine watch, the readiness watch, the
CloudWatch publisher) all run on it, so one definition keeps the rules the
same for all: started once, stopped promptly, and alive after a pass that
raised (a heartbeat loop that died on one bug would let the node expire from
every router while the engine serves). Under gevent the thread is a greenlet,
so a tick must not block there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any


class Ticker:
    """Subclasses implement :meth:`tick`; ``name`` names the thread and the log line.

    ``tick`` may return how long to wait before the next pass (a backoff, or
    a cadence that discounts the time the pass took); ``None`` means
    ``tick_s``. ``stop`` lets a component share one stop event among its
    loops; ``immediate`` runs the first pass at once instead of after ``tick_s``.
    """

    name = "ticker"

    def __init__(
        self,
        tick_s: float,
        *,
        stop: threading.Event | None = None,
        immediate: bool = False,
        name: str | None = None,
    ) -> None:
        self.tick_s = tick_s
        self.stopping = stop if stop is not None else threading.Event()
        self.immediate = immediate
        if name is not None:
            self.name = name
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> float | None:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the loop (and every other loop sharing the stop event) without waiting a pass out."""
        self.stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Run the next pass now instead of at the end of the current wait."""
        self._wake.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pause(self, seconds: float) -> None:
        """Wait inside a tick, ending early when stopped."""
        self.stopping.wait(seconds)

    def logger(self) -> logging.Logger:
        """The logger of the module that defines the job, so its failures read as its own."""
        return logging.getLogger(type(self).__module__)

    def _loop(self) -> None:
        delay = 0.0 if self.immediate else self.tick_s
        while not self._wait(delay):
            try:
                wait = self.tick()
            except Exception:  # the loop must outlive any bug in one pass
                self.logger().exception("%s pass failed", self.name)
                wait = None
            delay = self.tick_s if wait is None else max(0.0, wait)

    def _wait(self, delay: float) -> bool:
        """Wait ``delay`` or until woken; True once stopped.

        A shared stop event set by someone else (not through :meth:`stop`) is
        seen at the end of the wait at the latest.
        """
        if self.stopping.is_set():
            return True
        self._wake.wait(delay)
        self._wake.clear()
        return self.stopping.is_set()


class Every(Ticker):
    """A :class:`Ticker` calling ``fn``: for a loop whose state lives in its owner."""

    def __init__(self, tick_s: float, fn: Callable[[], float | None], **kwargs: Any) -> None:
        super().__init__(tick_s, **kwargs)
        self.fn = fn

    def tick(self) -> float | None:
        return self.fn()

    def logger(self) -> logging.Logger:
        return logging.getLogger(getattr(self.fn, "__module__", None) or __name__)
