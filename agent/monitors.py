"""The four IMDS pollers: spot notice, rebalance, ASG target state, scheduled events.

Each :class:`Monitor` turns one IMDS document into the events it currently
describes; a :class:`Poller` thread reads it every ``poll_interval_s`` and
hands every successful read's events, the same notice again and again, to
the sink (the agent's :class:`.eventstore.EventStore` sorts out what is new
and what was withdrawn). A 404 means "no event". IMDS errors back off with
jitter (never below the poll interval, at most 8 intervals, capped at 30 s)
and never end the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from spotrelay.core.backoff import Backoff
from spotrelay.core.imds_events import (
    parse_instance_action,
    parse_rebalance,
    parse_scheduled,
    parse_target_lifecycle_state,
)
from spotrelay.core.interruptions import Event, EventParseError
from spotrelay.core.ticker import Ticker

from .imds import ImdsClient, ImdsError

log = logging.getLogger("spotrelay.agent.monitors")

MD = "/latest/meta-data/"


@dataclass(frozen=True)
class Monitor:
    """One IMDS path and how to read it: ``parse`` gives the events the document
    describes now (``body`` is ``None`` on 404)."""

    name: str
    path: str
    parse: Callable[[str | None], Iterable[Event]]

    def observe(self, body: str | None) -> list[Event]:
        return list(self.parse(body))


def _at_most_one(
    parse: Callable[[str | None], Event | None],
) -> Callable[[str | None], list[Event]]:
    """A parser of a document that describes one event or none."""
    return lambda body: [event] if (event := parse(body)) else []


SPOT = Monitor("spot", MD + "spot/instance-action", _at_most_one(parse_instance_action))
REBALANCE = Monitor(
    "rebalance", MD + "events/recommendations/rebalance", _at_most_one(parse_rebalance)
)
LIFECYCLE_STATE = Monitor(
    "lifecycle",
    MD + "autoscaling/target-lifecycle-state",
    _at_most_one(parse_target_lifecycle_state),
)
# Every active scheduled event (one that disappears is withdrawn by the store).
MAINTENANCE = Monitor("maintenance", MD + "events/maintenance/scheduled", parse_scheduled)


def all_monitors() -> list[Monitor]:
    return [SPOT, REBALANCE, LIFECYCLE_STATE, MAINTENANCE]


#: receives ``(monitor name, events the document lists now)`` after every good read
Sink = Callable[[str, list[Event]], None]


class Poller(Ticker):
    """Polls one monitor until ``stop`` is set; hands each good read's events to ``sink``."""

    def __init__(
        self,
        monitor: Monitor,
        imds: ImdsClient,
        interval_s: float,
        sink: Sink,
        stop: threading.Event,
    ) -> None:
        super().__init__(interval_s, stop=stop, immediate=True, name=f"monitor-{monitor.name}")
        self.monitor = monitor
        self.imds = imds
        self.sink = sink
        self.backoff = Backoff(interval_s, min(30.0, max(2.0, 8 * interval_s)))
        self.polls = 0
        self._failing_since: float | None = None
        self._last_parse_error: str | None = None

    def poll_once(self) -> float:
        """One read; returns how long to wait before the next one."""
        self.polls += 1
        try:
            body = self.imds.get(self.monitor.path)
            events = self.monitor.observe(body)
        except ImdsError as exc:
            delay = self.backoff.next_delay()
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning(
                    "IMDS read failed, backing off: %s", exc, extra={"path": self.monitor.path}
                )
            else:
                log.debug("IMDS still failing: %s (next try in %.2fs)", exc, delay)
            return delay
        except EventParseError as exc:
            if str(exc) != self._last_parse_error:
                log.warning("ignoring unreadable IMDS document: %s", exc)
                self._last_parse_error = str(exc)
            return self.tick_s
        if self._failing_since is not None:
            log.info(
                "IMDS reads recovered after %.1fs",
                time.monotonic() - self._failing_since,
                extra={"path": self.monitor.path},
            )
            self._failing_since = None
        self.backoff.reset()
        try:
            self.sink(self.monitor.name, events)
        except Exception:  # the poller must outlive any bug downstream
            log.exception("event handler failed for %s", ", ".join(e.key for e in events))
        return self.tick_s

    def tick(self) -> float:
        started = time.monotonic()
        delay = self.poll_once()
        # Keep the cadence: the time the read took counts against the interval.
        return max(0.0, delay - (time.monotonic() - started))
