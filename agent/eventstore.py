"""The one place interruption events are deduplicated, whatever reported them.

IMDS shows a pending notice on every poll, an agent restarted mid-drain sees
the notice that started it again, and a second source (EventBridge events
through SQS, parsed by :mod:`spotrelay.core.eventbridge_events` into the same
events) can report the same notice for the same instance. Every source hands
what it saw to one :class:`EventStore`; the store answers with the events
that are *new*, so each event causes one action.

Identity is :class:`EventId` = kind + instance + :attr:`Event.key` (the
notice time or the provider's event id); the instance is the one the caller
names, else the event's own ``instance_id``, else the store's (IMDS events
name none: they are about the node that read them). Two sources rarely stamp one notice
to the second, so an event whose ``occurred_at`` is within ``skew_s`` of a
stored event of the same kind and instance is that event too; its key is
remembered as an alias. Entries nobody has reported for ``retention_s`` are
pruned, except a drain still planned for later.

The store also holds the plan for events acted on later (scheduled
maintenance drains at ``NotBefore - drain.maintenance_lead_s``): see
:meth:`EventStore.schedule` and :meth:`EventStore.due`. It does no I/O and
reads time only through the injected clock; it is thread-safe (the pollers
and the main loop share it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from spotrelay.core.interruptions import Event

Clock = Callable[[], float]

RETENTION_S = 3600.0  # an hour without a sighting: the event is over
SKEW_S = 30.0  # two sources' stamps of one notice differ by seconds, two notices by minutes


class EventId(NamedTuple):
    """What makes two reports the same event."""

    kind: str
    instance_id: str
    key: str


@dataclass
class Record:
    """One event as the store knows it."""

    id: EventId
    #: ``None`` for an event known only by its id (restored from the drain state file)
    event: Event | None
    first_seen: float
    last_seen: float
    sources: set[str] = field(default_factory=set)
    sightings: int = 1
    #: a drain planned for this time (wall clock); ``None``: nothing planned
    drain_at: float | None = None
    #: a snapshot source stopped listing it (a scheduled event was canceled)
    withdrawn: bool = False


class EventStore:
    """Deduplicates events from every source for one or more instances."""

    def __init__(
        self,
        instance_id: str,
        *,
        clock: Clock = time.time,
        retention_s: float = RETENTION_S,
        skew_s: float = SKEW_S,
    ) -> None:
        self.instance_id = instance_id
        self.retention_s = retention_s
        self.skew_s = skew_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[EventId, Record] = {}
        self._aliases: dict[EventId, EventId] = {}  # another source's key -> record id

    # ------------------------------------------------------------ sources
    def add(self, event: Event, source: str, instance_id: str | None = None) -> Event | None:
        """One report of ``event``; returns it if it is new, ``None`` if already known."""
        with self._lock:
            return self._add(event, source, self._instance(event, instance_id), self._clock())

    def observe(
        self, source: str, events: Iterable[Event], instance_id: str | None = None
    ) -> list[Event]:
        """Everything a snapshot source (an IMDS document) lists now; returns what is new.

        A withdrawable event (:meth:`Event.canceled`) that ``source`` listed
        before and lists no more is withdrawn: its cancellation is returned
        once, like any new event.
        """
        instance = instance_id or self.instance_id
        with self._lock:
            now = self._clock()
            new: list[Event] = []
            present: set[EventId] = set()
            for event in events:
                found = self._add(event, source, instance, now)
                if found is not None:
                    new.append(found)
                present.add(self._resolve(self._id(event, instance)))
            for record in list(self._records.values()):
                if (
                    source in record.sources
                    and record.id.instance_id == instance
                    and record.id not in present
                    and not record.withdrawn
                    and record.event is not None
                ):
                    cancel = record.event.canceled()
                    if cancel is None:
                        continue  # a notice that vanishes is not a retraction
                    record.withdrawn = True
                    found = self._add(cancel, source, instance, now)
                    if found is not None:
                        new.append(found)
            self._prune(now)
            return new

    def remember(self, kind: str, key: str, instance_id: str | None = None) -> None:
        """An event already acted on before a restart (from the drain state file)."""
        event_id = EventId(kind, instance_id or self.instance_id, key)
        with self._lock:
            now = self._clock()
            if self._resolve(event_id) not in self._records:
                self._records[event_id] = Record(event_id, None, now, now)

    # ---------------------------------------------------------- planning
    def schedule(self, event: Event, at: float, instance_id: str | None = None) -> None:
        """Plan a drain for ``event`` at ``at``; :meth:`due` hands it back then."""
        with self._lock:
            record = self._records.get(self._resolve(self._id(event, instance_id)))
            if record is not None:
                record.drain_at = at

    def unschedule(self, key: str, instance_id: str | None = None) -> bool:
        """Drop the drain planned for the event named ``key``; True if one was planned."""
        instance = instance_id or self.instance_id
        with self._lock:
            ids = [i for i in (*self._records, *self._aliases) if i[1:] == (instance, key)]
            for event_id in ids:
                record = self._records.get(self._resolve(event_id))
                if record is not None and record.drain_at is not None:
                    record.drain_at = None
                    return True
            return False

    def due(self) -> list[Event]:
        """Events whose planned drain time has come (each handed back once); prunes."""
        with self._lock:
            now = self._clock()
            ready = sorted(
                (r for r in self._records.values() if r.drain_at is not None and r.drain_at <= now),
                key=lambda r: r.drain_at or 0.0,
            )
            for record in ready:
                record.drain_at = None
            self._prune(now)
            return [r.event for r in ready if r.event is not None]

    # ------------------------------------------------------------ queries
    def records(self) -> list[Record]:
        """A copy of what the store holds (for tests and diagnostics)."""
        with self._lock:
            return list(self._records.values())

    def holds(self, kind: str) -> bool:
        """An event of ``kind`` is still reported (not pruned, not withdrawn)."""
        with self._lock:
            return any(r.id.kind == kind and not r.withdrawn for r in self._records.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    # ----------------------------------------------------------- private
    def _instance(self, event: Event, instance_id: str | None) -> str:
        return instance_id or event.instance_id or self.instance_id

    def _id(self, event: Event, instance_id: str | None) -> EventId:
        return EventId(event.kind, self._instance(event, instance_id), event.key)

    def _resolve(self, event_id: EventId) -> EventId:
        return self._aliases.get(event_id, event_id)

    def _add(self, event: Event, source: str, instance: str, now: float) -> Event | None:
        event_id = self._resolve(self._id(event, instance))
        record = self._records.get(event_id) or self._near(event, event_id)
        if record is not None:
            if record.id != event_id:
                self._aliases[event_id] = record.id
            record.last_seen = now
            record.sightings += 1
            record.sources.add(source)
            return None
        self._records[event_id] = Record(event_id, event, now, now, {source})
        return event

    def _near(self, event: Event, event_id: EventId) -> Record | None:
        """A stored record of the same kind and instance stamped within ``skew_s``."""
        at = event.occurred_at
        if at is None:
            return None
        for record in self._records.values():
            other = record.event.occurred_at if record.event is not None else None
            if (
                record.id.kind == event_id.kind
                and record.id.instance_id == event_id.instance_id
                and other is not None
                and abs(other - at) <= self.skew_s
            ):
                return record
        return None

    def _prune(self, now: float) -> None:
        stale = [
            r.id
            for r in self._records.values()
            if r.drain_at is None and now - r.last_seen > self.retention_s
        ]
        for event_id in stale:
            del self._records[event_id]
        if stale:
            gone = set(stale)
            self._aliases = {a: t for a, t in self._aliases.items() if t not in gone}
