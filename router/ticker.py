"""One background loop per upkeep job: a daemon thread calling ``tick()`` every ``tick_s``.

The router's upkeep (TTL expiry and probes, the idle-stream watchdog, the
client-disconnect sweep, the metrics snapshot) each run on such a loop. Under
gevent the thread is a greenlet, so a tick must not block. One definition
keeps the start-once, stop and survive-a-failing-pass rules the same for all.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("spotrelay.router")


class Ticker:
    """Subclasses implement :meth:`tick`; ``name`` names the thread and the log line."""

    name = "ticker"

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def pause(self, seconds: float) -> None:
        """Wait inside a tick, ending early when stopped."""
        self._stop.wait(seconds)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # the loop must outlive any bug in one pass
                log.exception("%s pass failed", self.name)
