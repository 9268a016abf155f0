"""EventBridge events that announce an instance is going away, as the controller sees them.

The shapes are the documented ones (EC2, EC2 Auto Scaling and AWS Health event
references): ``detail-type`` names the event, the instance id is
``detail["instance-id"]`` for EC2 events, ``detail["EC2InstanceId"]`` for
Auto Scaling lifecycle actions (whose ``LifecycleActionToken`` the controller
keeps, to complete the action for a silent agent) and
``detail["affectedEntities"][*]["entityValue"]`` for an AWS Health scheduled
change (instance retirement, stop or maintenance reboot: one event may name
several instances). Anything else parses to nothing and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from spotrelay.core.protocol import valid_instance_id

SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
TERMINATE_ACTION = "EC2 Instance-terminate Lifecycle Action"
STATE_CHANGE = "EC2 Instance State-change Notification"
HEALTH = "AWS Health Event"
GOING_STATES = frozenset({"stopping", "shutting-down", "terminated", "stopped"})


class Kind(StrEnum):
    SPOT_INTERRUPTION = "spot_interruption"
    REBALANCE = "rebalance"
    LIFECYCLE_TERMINATE = "lifecycle_terminate"
    STATE_CHANGE = "state_change"
    SCHEDULED_CHANGE = "scheduled_change"


@dataclass(frozen=True)
class LifecycleAction:
    """Enough to complete a terminate lifecycle action: group, hook and the event's token."""

    group: str
    hook: str
    token: str


@dataclass(frozen=True)
class Interruption:
    kind: Kind
    instance_id: str
    event_id: str
    detail: str = ""  # instance-action, state, group name or event type, for the log line
    action: LifecycleAction | None = None  # the terminate lifecycle action, if this is one


def parse_events(event: Any) -> list[Interruption]:
    """Every interruption an EventBridge event announces (empty: not ours, or malformed)."""
    if isinstance(event, dict) and event.get("detail-type") == HEALTH:
        return _health(event)
    notice = parse_event(event)
    return [notice] if notice is not None else []


def _health(event: dict[str, Any]) -> list[Interruption]:
    """An AWS Health scheduled change for EC2 instances: each affected instance."""
    detail = event.get("detail")
    if event.get("source") != "aws.health" or not isinstance(detail, dict):
        return []
    if detail.get("service") != "EC2" or detail.get("eventTypeCategory") != "scheduledChange":
        return []
    entities = detail.get("affectedEntities")
    values = [e.get("entityValue") for e in entities or [] if isinstance(e, dict)]
    if not values:  # the entities are optional in the schema; resources name them too
        values = [r for r in event.get("resources") or [] if isinstance(r, str)]
    code, event_id = str(detail.get("eventTypeCode") or ""), str(event.get("id") or "")
    out = [_build(Kind.SCHEDULED_CHANGE, v, event_id, code) for v in dict.fromkeys(values)]
    return [n for n in out if n is not None]


def _lifecycle_action(detail: dict[str, Any]) -> LifecycleAction | None:
    fields = [detail.get(k) for k in ("AutoScalingGroupName", "LifecycleHookName")]
    token = detail.get("LifecycleActionToken")
    if not all(isinstance(f, str) and f for f in fields) or not isinstance(token, str):
        return None
    return LifecycleAction(fields[0], fields[1], token)


def parse_event(event: Any) -> Interruption | None:
    """The interruption an EC2 or Auto Scaling event announces, or None (not ours, or malformed)."""
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
        notice = _build(kind, instance, event_id, str(detail.get("AutoScalingGroupName") or ""))
        return replace(notice, action=_lifecycle_action(detail)) if notice else None
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
