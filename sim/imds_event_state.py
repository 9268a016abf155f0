"""What is happening to the emulated instance: the events the agent reacts to.

A spot interruption notice, a rebalance recommendation, the Auto Scaling
target lifecycle state and scheduled maintenance events, each set by one
control action and shown in the metadata tree. A spot notice's ``time`` is
fixed when the notice is created (injected clock), so a drain deadline
computed from it stays put.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .imds_control import ControlError, choice, float_value, number, only
from .imds_format import aws_event_time, aws_json, iso_utc

Clock = Callable[[], float]

DEFAULT_LEAD_S = 120.0
MAX_LEAD_S = 7 * 86400.0
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
SCHEDULED_CODES = (
    "instance-reboot",
    "system-reboot",
    "system-maintenance",
    "instance-retirement",
    "instance-stop",
)
# Steady states Auto Scaling writes to autoscaling/target-lifecycle-state.
TARGET_LIFECYCLE_STATES = (
    "InService",
    "Terminated",
    "Detached",
    "Standby",
    "Warmed:Hibernated",
    "Warmed:Running",
    "Warmed:Stopped",
    "Warmed:Terminated",
)

# Descriptions AWS uses for these codes (the text varies; these are typical).
_DESCRIPTIONS = {
    "instance-reboot": "scheduled reboot",
    "system-reboot": "scheduled reboot",
    "system-maintenance": "scheduled maintenance",
    "instance-retirement": "The instance is running on degraded hardware",
    "instance-stop": "The instance is running on degraded hardware",
}
# Stop and retirement events have no end; the others a window (AWS omits NotAfter then).
_DEFAULT_DURATION_S = {
    "instance-reboot": 3600.0,
    "system-reboot": 3600.0,
    "system-maintenance": 3600.0,
    "instance-retirement": None,
    "instance-stop": None,
}


@dataclass(frozen=True)
class SpotNotice:
    """A spot interruption notice; its texts are fixed when it is created."""

    action: str
    notice_at: float
    at: float

    @property
    def time_text(self) -> str:
        return iso_utc(self.at)

    def instance_action(self) -> str:
        return json.dumps({"action": self.action, "time": self.time_text})


class InstanceEvents:
    """The events of one instance, set by control actions, shown as metadata."""

    def __init__(
        self, lifecycle: str, clock: Clock, target_lifecycle_state: str | None = "InService"
    ) -> None:
        if target_lifecycle_state not in (None, *TARGET_LIFECYCLE_STATES):
            raise ValueError(f"unknown target lifecycle state {target_lifecycle_state!r}")
        self.lifecycle = lifecycle  # spot notices and rebalances exist only on spot
        self.clock = clock
        self._initial_target_state = target_lifecycle_state
        self.reset()

    def reset(self) -> None:
        """Back to a freshly booted instance's events."""
        self.spot: SpotNotice | None = None
        self.rebalance_at: float | None = None
        self.target_lifecycle_state = self._initial_target_state
        self.scheduled: list[dict[str, str]] = []

    def actions(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        """The control actions that set events, by name."""
        return {
            "spot": self._control_spot,
            "rebalance": self._control_rebalance,
            "lifecycle": self._control_lifecycle,
            "scheduled": self._control_scheduled,
        }

    # ------------------------------------------------------------------ views

    def meta_data(self) -> dict[str, Any]:
        """The ``meta-data/`` entries the events make: ``events``, ``autoscaling``, ``spot``."""
        events: dict[str, Any] = {
            "maintenance": {"history": "[]", "scheduled": aws_json(self.scheduled)}
        }
        if self.rebalance_at is not None:
            events["recommendations"] = {
                "rebalance": json.dumps({"noticeTime": iso_utc(self.rebalance_at)})
            }
        md: dict[str, Any] = {"events": events}
        if self.target_lifecycle_state is not None:
            md["autoscaling"] = {"target-lifecycle-state": self.target_lifecycle_state}
        if self.spot is not None:
            spot = {"instance-action": self.spot.instance_action()}
            if self.spot.action == "terminate":
                spot["termination-time"] = self.spot.time_text
            md["spot"] = spot
        return md

    def snapshot(self, now: float) -> dict[str, Any]:
        """The events as ``GET /_control/state`` shows them."""
        spot = None
        if self.spot is not None:
            spot = {
                "action": self.spot.action,
                "time": self.spot.time_text,
                "notice_time": iso_utc(self.spot.notice_at),
                "seconds_left": round(self.spot.at - now, 3),
            }
        rebalance = None
        if self.rebalance_at is not None:
            rebalance = {"noticeTime": iso_utc(self.rebalance_at)}
        return {
            "spot": spot,
            "rebalance": rebalance,
            "target_lifecycle_state": self.target_lifecycle_state,
            "scheduled": list(self.scheduled),
        }

    # ------------------------------------------------------------------ control

    def _require_spot(self, what: str) -> None:
        if self.lifecycle != "spot":
            raise ControlError(
                f"{what} only exist on spot instances; this one is {self.lifecycle}",
                status=409,
            )

    def _control_spot(self, body: dict[str, Any]) -> None:
        only(body, "action", "lead_s")
        self._require_spot("spot interruption notices")
        action = choice(body, "action", "terminate", SPOT_ACTIONS)
        # Hibernation starts at once: AWS gives no two-minute warning for it.
        default_lead = 0.0 if action == "hibernate" else DEFAULT_LEAD_S
        lead = float_value(body, "lead_s", default_lead, 0, MAX_LEAD_S)
        now = self.clock()
        self.spot = SpotNotice(action, now, now + lead)

    def _control_rebalance(self, body: dict[str, Any]) -> None:
        only(body, "lead_s")  # accepted for symmetry with spot; a rebalance has no deadline
        self._require_spot("rebalance recommendations")
        number(body, "lead_s", 0.0, 0, MAX_LEAD_S)
        if self.rebalance_at is None:
            self.rebalance_at = self.clock()

    def _control_lifecycle(self, body: dict[str, Any]) -> None:
        only(body, "state")
        if "state" not in body:
            raise ControlError("'state' is required: one of " + ", ".join(TARGET_LIFECYCLE_STATES))
        state = body["state"]
        if state is None or state == "none":
            self.target_lifecycle_state = None
            return
        if state not in TARGET_LIFECYCLE_STATES:
            raise ControlError(
                f"'state' must be one of {', '.join(TARGET_LIFECYCLE_STATES)} or null; "
                f"got {state!r}"
            )
        self.target_lifecycle_state = state

    def _control_scheduled(self, body: dict[str, Any]) -> None:
        only(body, "code", "not_before_s", "duration_s", "not_before_deadline_s", "description")
        code = choice(body, "code", "system-reboot", SCHEDULED_CODES)
        not_before_s = float_value(body, "not_before_s", 600.0, 0, MAX_LEAD_S)
        duration = number(
            body, "duration_s", _DEFAULT_DURATION_S[code], 0, MAX_LEAD_S, nullable=True
        )
        deadline_s = number(body, "not_before_deadline_s", None, 0, MAX_LEAD_S)
        description = body.get("description", _DESCRIPTIONS[code])
        if not isinstance(description, str) or not description:
            raise ControlError("'description' must be a non-empty string")
        now = self.clock()
        start = now + not_before_s
        event = {
            "NotBefore": aws_event_time(start),
            "Code": code,
            "Description": description,
            "EventId": "instance-event-0" + secrets.token_hex(8),
        }
        if duration is not None:
            event["NotAfter"] = aws_event_time(start + duration)
        if deadline_s is not None:
            if deadline_s < not_before_s:
                raise ControlError("'not_before_deadline_s' must be >= 'not_before_s'")
            event["NotBeforeDeadline"] = aws_event_time(now + deadline_s)
        event["State"] = "active"
        self.scheduled.append(event)
