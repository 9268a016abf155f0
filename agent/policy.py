"""What the agent does about each interruption event: the one place that decides.

The running agent acts on the decision and ``spotrelay agent check`` reports
it, so the two can never disagree about which event keeps a node out of
service.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from spotrelay.core.interruptions import (
    Event,
    LifecycleTerminated,
    MaintenanceCanceled,
    Rebalance,
    ScheduledMaintenance,
    SpotInterruption,
    iso,
)

from .settings import Drain


class Action(StrEnum):
    DRAIN = "drain"  # drain now
    SCHEDULE = "schedule"  # drain at Decision.at
    REPORT = "report"  # log, metric and webhook only
    CANCEL = "cancel"  # drop the drain planned for Decision.cancels


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    at: float | None = None  # SCHEDULE: when to start draining
    cancels: str | None = None  # CANCEL: key of the withdrawn event


@dataclass(frozen=True)
class EventPolicy:
    """The ``drain.*`` settings that turn an event into an action."""

    on_rebalance: bool = False
    maintenance_lead_s: float = 900.0

    @classmethod
    def from_config(cls, drain: Drain) -> EventPolicy:
        return cls(on_rebalance=drain.on_rebalance, maintenance_lead_s=drain.maintenance_lead_s)

    def decide(self, event: Event, now: float) -> Decision:
        """``now`` is POSIX seconds, the clock event times are in."""
        match event:
            case SpotInterruption() | LifecycleTerminated():
                return Decision(Action.DRAIN, f"{event.kind}: the instance is going away")
            case Rebalance() if self.on_rebalance:
                return Decision(Action.DRAIN, "rebalance recommendation (drain.on_rebalance)")
            case Rebalance():
                return Decision(
                    Action.REPORT,
                    "rebalance recommendation: reported only (drain.on_rebalance is false)",
                )
            case ScheduledMaintenance():
                start_at = event.not_before - self.maintenance_lead_s
                if now >= start_at:
                    return Decision(
                        Action.DRAIN,
                        f"scheduled {event.code} at {iso(event.not_before)}"
                        " is within drain.maintenance_lead_s",
                    )
                return Decision(
                    Action.SCHEDULE,
                    f"scheduled {event.code}: will drain at {iso(start_at)}",
                    at=start_at,
                )
            case MaintenanceCanceled():
                return Decision(
                    Action.CANCEL, "scheduled event canceled", cancels=event.original_key
                )
        return Decision(Action.REPORT, f"{event.kind}: no action defined")
