"""Typed interruption events, each with a stable deduplication key.

IMDS keeps answering with the same document for as long as an event is
pending, so the monitors see one notice hundreds of times; another source
(EventBridge through SQS) may report the same notice again. ``key`` names the
event itself (not the sighting): two sightings with the same key are one
event and cause one action (:mod:`.eventstore` keeps that promise).
``occurred_at`` is the time the key is built from, so a source that stamps
the same notice a few seconds differently still matches. Times are POSIX
seconds (UTC wall clock), which is what IMDS times mean and what the state
file stores.
"""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

#: EC2 sends the spot interruption warning two minutes before the action. IMDS
#: gives the action's time; EventBridge gives when the warning was sent, so a
#: source reading EventBridge adds this to build the same :class:`SpotInterruption`.
SPOT_WARNING_S = 120.0


class EventParseError(ValueError):
    """An IMDS document that does not look like the event it should be."""


def parse_time(text: str) -> float:
    """POSIX seconds from the time formats IMDS uses.

    Spot and rebalance notices use ISO 8601 (``2017-09-18T08:22:00Z``);
    scheduled events use ``21 Jan 2019 09:00:43 GMT``.
    """
    text = text.strip()
    for fmt in ("%d %b %Y %H:%M:%S GMT", "%d %b %Y %H:%M:%S UTC"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EventParseError(f"unrecognised time {text!r}") from None
    if parsed.tzinfo is None:  # IMDS times are UTC even when unmarked
        return float(calendar.timegm(parsed.timetuple())) + parsed.microsecond / 1e6
    return parsed.timestamp()


def iso(t: float | None) -> str | None:
    """``2024-05-01T12:00:00Z`` for logs, webhooks and the state file."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class Event:
    """Base class: what every event can tell the drain logic."""

    kind: ClassVar[str] = "event"
    #: the instance is going away (a termination lifecycle action may be pending)
    terminating: ClassVar[bool] = False

    @property
    def key(self) -> str:
        raise NotImplementedError

    @property
    def deadline(self) -> float | None:
        """When the instance is lost; ``None`` if the event carries no time."""
        return None

    @property
    def occurred_at(self) -> float | None:
        """The time in ``key``; ``None`` if the key has none (it then must match exactly)."""
        return None

    def canceled(self) -> Event | None:
        """The event that says this one was withdrawn; ``None``: it cannot be withdrawn."""
        return None

    def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.kind, "key": self.key}
        for name, value in asdict(self).items():
            doc[name] = iso(value) if name.endswith("time") or name.startswith("not_") else value
        return doc


@dataclass(frozen=True)
class SpotInterruption(Event):
    """``spot/instance-action``: the instance is reclaimed at ``time``."""

    kind: ClassVar[str] = "spot_interruption"
    terminating: ClassVar[bool] = True
    action: str
    time: float

    @property
    def key(self) -> str:
        return f"spot:{self.action}:{iso(self.time)}"

    @property
    def deadline(self) -> float:
        return self.time

    @property
    def occurred_at(self) -> float:
        return self.time


@dataclass(frozen=True)
class Rebalance(Event):
    """``events/recommendations/rebalance``: elevated risk of interruption, no deadline."""

    kind: ClassVar[str] = "rebalance"
    notice_time: float

    @property
    def key(self) -> str:
        return f"rebalance:{iso(self.notice_time)}"

    @property
    def occurred_at(self) -> float:
        return self.notice_time


@dataclass(frozen=True)
class LifecycleTerminated(Event):
    """``autoscaling/target-lifecycle-state`` = ``Terminated``: scale-in or replacement."""

    kind: ClassVar[str] = "lifecycle_terminated"
    terminating: ClassVar[bool] = True

    @property
    def key(self) -> str:
        return "target-lifecycle-state:Terminated"


@dataclass(frozen=True)
class ScheduledMaintenance(Event):
    """One entry of ``events/maintenance/scheduled``; the host goes at ``not_before``."""

    kind: ClassVar[str] = "scheduled_maintenance"
    code: str
    not_before: float
    event_id: str = ""
    not_after: float | None = None
    description: str = ""

    @property
    def key(self) -> str:
        return f"maintenance:{self.event_id or self.code}:{iso(self.not_before)}"

    @property
    def deadline(self) -> float:
        return self.not_before

    @property
    def occurred_at(self) -> float:
        return self.not_before

    def canceled(self) -> MaintenanceCanceled:
        return MaintenanceCanceled(original_key=self.key)


@dataclass(frozen=True)
class MaintenanceCanceled(Event):
    """A scheduled event we saw earlier was canceled or disappeared."""

    kind: ClassVar[str] = "maintenance_canceled"
    original_key: str

    @property
    def key(self) -> str:
        return f"canceled:{self.original_key}"


# ---------------------------------------------------------------------- parsers
# Each takes the body IMDS returned (``None`` = 404 = no event) and returns
# the events it describes.


def _json(body: str, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise EventParseError(f"{what}: not JSON: {body[:80]!r}") from None


def parse_instance_action(body: str | None) -> SpotInterruption | None:
    if body is None or not body.strip():
        return None
    doc = _json(body, "spot/instance-action")
    if not isinstance(doc, dict) or "action" not in doc or "time" not in doc:
        raise EventParseError(f"spot/instance-action: unexpected document {doc!r}")
    return SpotInterruption(action=str(doc["action"]), time=parse_time(str(doc["time"])))


def parse_rebalance(body: str | None) -> Rebalance | None:
    if body is None or not body.strip():
        return None
    doc = _json(body, "events/recommendations/rebalance")
    if not isinstance(doc, dict) or "noticeTime" not in doc:
        raise EventParseError(f"rebalance: unexpected document {doc!r}")
    return Rebalance(notice_time=parse_time(str(doc["noticeTime"])))


def parse_target_lifecycle_state(body: str | None) -> LifecycleTerminated | None:
    """Only ``Terminated`` matters; ``InService``, ``Warmed:*``, ``Standby``... do not."""
    if body is None:
        return None
    return LifecycleTerminated() if body.strip() == "Terminated" else None


def parse_scheduled(body: str | None) -> list[ScheduledMaintenance]:
    """Active scheduled events; completed or canceled ones are history, not events."""
    if body is None or not body.strip():
        return []
    doc = _json(body, "events/maintenance/scheduled")
    if isinstance(doc, dict):  # tolerate a single object where a list is documented
        doc = [doc]
    if not isinstance(doc, list):
        raise EventParseError(f"events/maintenance/scheduled: unexpected document {doc!r}")
    events = []
    for item in doc:
        if not isinstance(item, dict) or "NotBefore" not in item:
            raise EventParseError(f"scheduled event without NotBefore: {item!r}")
        state = str(item.get("State", "active")).lower()
        description = str(item.get("Description", ""))
        if state in ("canceled", "completed") or description.startswith(
            ("[Canceled]", "[Completed]")
        ):
            continue
        not_after = item.get("NotAfter")
        events.append(
            ScheduledMaintenance(
                code=str(item.get("Code", "unknown")),
                not_before=parse_time(str(item["NotBefore"])),
                event_id=str(item.get("EventId", "")),
                not_after=parse_time(str(not_after)) if not_after else None,
                description=description,
            )
        )
    return events
