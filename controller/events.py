"""EventBridge events that announce an instance is going away, as the controller sees them.

The shapes are the documented ones (EC2 and EC2 Auto Scaling event
references): ``detail-type`` names the event, the instance id is
``detail["instance-id"]`` for EC2 events and ``detail["EC2InstanceId"]`` for
Auto Scaling lifecycle actions. Anything else parses to None and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from spotrelay.core.protocol import valid_instance_id

SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
TERMINATE_ACTION = "EC2 Instance-terminate Lifecycle Action"
STATE_CHANGE = "EC2 Instance State-change Notification"
GOING_STATES = frozenset({"stopping", "shutting-down", "terminated", "stopped"})


class Kind(StrEnum):
    SPOT_INTERRUPTION = "spot_interruption"
    REBALANCE = "rebalance"
    LIFECYCLE_TERMINATE = "lifecycle_terminate"
    STATE_CHANGE = "state_change"


@dataclass(frozen=True)
class Interruption:
    kind: Kind
    instance_id: str
    event_id: str
    detail: str = ""  # instance-action, state or the group name, for the log line


def parse_event(event: Any) -> Interruption | None:
    """The interruption an EventBridge event announces, or None (not ours, or malformed)."""
    if not isinstance(event, dict) or not isinstance(event.get("detail"), dict):
        return None
    kind_name, detail = event.get("detail-type"), event["detail"]
    event_id = str(event.get("id") or "")
    if kind_name == SPOT_WARNING:
        kind, instance, extra = Kind.SPOT_INTERRUPTION, detail.get("instance-id"), "instance-action"
    elif kind_name == REBALANCE:
        kind, instance, extra = Kind.REBALANCE, detail.get("instance-id"), ""
    elif kind_name == TERMINATE_ACTION:
        if detail.get("LifecycleTransition") != "autoscaling:EC2_INSTANCE_TERMINATING":
            return None
        if detail.get("Destination") == "WarmPool":
            return None  # back to a warm pool: stopped, not lost, and no engine was serving
        kind, instance = Kind.LIFECYCLE_TERMINATE, detail.get("EC2InstanceId")
        extra = "AutoScalingGroupName"
    elif kind_name == STATE_CHANGE:
        if detail.get("state") not in GOING_STATES:
            return None
        kind, instance, extra = Kind.STATE_CHANGE, detail.get("instance-id"), "state"
    else:
        return None
    return _build(kind, instance, event_id, str(detail.get(extra) or "") if extra else "")


def _build(kind: Kind, instance: Any, event_id: str, detail: str) -> Interruption | None:
    if not isinstance(instance, str) or not valid_instance_id(instance):
        return None
    return Interruption(kind, instance, event_id, detail)
