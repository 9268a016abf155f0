"""The one model of "this instance is going away", for the agent and the controller alike.

A notice reaches spotrelay by two roads: the node's agent reads it from IMDS
(:mod:`.imds_events`) and the controller gets it from EventBridge through SQS
(:mod:`.eventbridge_events`). Both parse into these events, so a kind means
the same thing whoever heard it, and the two reports of one notice build the
same kind of event with nearly the same time: the agent's event store can
tell they are one event, and the controller drains by the instance id the
event carries.

``key`` names the event itself, not the sighting: IMDS answers with the same
document for as long as an event is pending, so a monitor sees one notice
hundreds of times, each with one key. ``occurred_at`` is the time the key is
built from, so a source that stamps the same notice a few seconds
differently still matches. Times are POSIX seconds (UTC wall clock), which is
what IMDS and EventBridge times mean and what the agent's state file stores.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

#: EC2 sends the spot interruption warning two minutes before the action. IMDS
#: gives the action's time; EventBridge gives when the warning was sent, so its
#: parser adds this to build the same :class:`SpotInterruption`.
SPOT_WARNING_S = 120.0

# Field metadata for Event.describe(): the event's source identity is shown
# only when a source set it (IMDS documents name no instance); the lifecycle
# action's token completes the action, so it is never shown.
_SHOWN_IF_SET = {"describe": "if_set"}
_NEVER_SHOWN = {"describe": "never"}
_IDENTITY = ("instance_id", "event_id")


class EventParseError(ValueError):
    """A document that does not look like the event it should be."""


class Kind(StrEnum):
    """What an event announces; the value is its name in logs, metrics and the state file."""

    SPOT_INTERRUPTION = "spot_interruption"
    REBALANCE = "rebalance"
    LIFECYCLE_TERMINATED = "lifecycle_terminated"
    SCHEDULED_MAINTENANCE = "scheduled_maintenance"
    MAINTENANCE_CANCELED = "maintenance_canceled"
    STATE_CHANGE = "state_change"  # EventBridge only: the instance is stopping or terminating
    SCHEDULED_CHANGE = "scheduled_change"  # EventBridge only: an AWS Health scheduled change


def parse_time(text: str) -> float:
    """POSIX seconds from the time formats AWS uses.

    Spot and rebalance notices and EventBridge events use ISO 8601
    (``2017-09-18T08:22:00Z``); IMDS scheduled events use ``21 Jan 2019 09:00:43 GMT``.
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
class LifecycleAction:
    """Enough to complete a terminate lifecycle action: group, hook and the event's token."""

    group: str
    hook: str
    token: str


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base class: what every event can tell the agent's drain and the controller."""

    kind: ClassVar[Kind]
    #: the instance is going away (a termination lifecycle action may be pending)
    terminating: ClassVar[bool] = False
    #: the instance the event is about; "" when the source is that instance (IMDS)
    instance_id: str = field(default="", metadata=_SHOWN_IF_SET)
    #: the provider's id of the event: EventBridge's ``id``, IMDS's ``EventId`` of a
    #: scheduled entry; "" when the source gives none
    event_id: str = field(default="", metadata=_SHOWN_IF_SET)

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

    @property
    def detail(self) -> str:
        """One word for a log line (the spot action, the state, the group...)."""
        return ""

    def canceled(self) -> Event | None:
        """The event that says this one was withdrawn; ``None``: it cannot be withdrawn."""
        return None

    def describe(self) -> dict[str, Any]:
        """The event for webhooks, ``agent check`` and the drain state file."""
        doc: dict[str, Any] = {"type": self.kind.value, "key": self.key}
        # the kind's own fields first, then the source's identity
        for f in sorted(fields(self), key=lambda f: f.name in _IDENTITY):
            value, shown = getattr(self, f.name), f.metadata.get("describe")
            if shown == "never" or (shown == "if_set" and not value):
                continue
            timed = f.name.endswith("time") or f.name.startswith("not_")
            doc[f.name] = iso(value) if timed else value
        return doc


@dataclass(frozen=True)
class SpotInterruption(Event):
    """The spot instance is reclaimed (terminated, stopped or hibernated) at ``time``."""

    kind: ClassVar[Kind] = Kind.SPOT_INTERRUPTION
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

    @property
    def detail(self) -> str:
        return self.action


@dataclass(frozen=True)
class Rebalance(Event):
    """A rebalance recommendation: elevated risk of interruption, no deadline."""

    kind: ClassVar[Kind] = Kind.REBALANCE
    notice_time: float

    @property
    def key(self) -> str:
        return f"rebalance:{iso(self.notice_time)}"

    @property
    def occurred_at(self) -> float:
        return self.notice_time


@dataclass(frozen=True)
class LifecycleTerminated(Event):
    """The Auto Scaling group is terminating the instance: scale-in or replacement.

    IMDS shows it as the target lifecycle state ``Terminated``; EventBridge's
    terminate lifecycle action also carries ``lifecycle``, which lets the
    controller complete the action for a silent agent.
    """

    kind: ClassVar[Kind] = Kind.LIFECYCLE_TERMINATED
    terminating: ClassVar[bool] = True
    lifecycle: LifecycleAction | None = field(default=None, metadata=_NEVER_SHOWN)

    @property
    def key(self) -> str:
        return "target-lifecycle-state:Terminated"

    @property
    def detail(self) -> str:
        return self.lifecycle.group if self.lifecycle is not None else ""


@dataclass(frozen=True)
class ScheduledMaintenance(Event):
    """One scheduled event (reboot, retirement...); the host goes at ``not_before``.

    ``event_id`` is IMDS's ``EventId`` of the entry.
    """

    kind: ClassVar[Kind] = Kind.SCHEDULED_MAINTENANCE
    code: str
    not_before: float
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

    @property
    def detail(self) -> str:
        return self.code

    def canceled(self) -> MaintenanceCanceled:
        return MaintenanceCanceled(original_key=self.key, instance_id=self.instance_id)


@dataclass(frozen=True)
class MaintenanceCanceled(Event):
    """A scheduled event seen earlier was canceled or disappeared."""

    kind: ClassVar[Kind] = Kind.MAINTENANCE_CANCELED
    original_key: str

    @property
    def key(self) -> str:
        return f"canceled:{self.original_key}"


@dataclass(frozen=True)
class InstanceStateChange(Event):
    """The instance is stopping or terminating (``stopping``, ``shutting-down``...)."""

    kind: ClassVar[Kind] = Kind.STATE_CHANGE
    state: str

    @property
    def key(self) -> str:
        return f"state:{self.state}"

    @property
    def detail(self) -> str:
        return self.state


@dataclass(frozen=True)
class HealthScheduledChange(Event):
    """An AWS Health scheduled change of the instance: retirement, stop, maintenance reboot."""

    kind: ClassVar[Kind] = Kind.SCHEDULED_CHANGE
    code: str  # the Health event type, e.g. AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED
    arn: str = ""  # the Health event's ARN: one per change, whatever the updates

    @property
    def key(self) -> str:
        return f"health:{self.arn or self.code}"

    @property
    def detail(self) -> str:
        return self.code
