"""EventBridge events as interruption events (:mod:`.interruptions`), the controller's road.

The shapes are the documented ones (EC2, EC2 Auto Scaling and AWS Health event
references): ``detail-type`` names the event, the instance id is
``detail["instance-id"]`` for EC2 events, ``detail["EC2InstanceId"]`` for
Auto Scaling lifecycle actions (whose ``LifecycleActionToken`` is kept, to
complete the action for a silent agent) and
``detail["affectedEntities"][*]["entityValue"]`` for an AWS Health scheduled
change (instance retirement, stop or maintenance reboot: one event may name
several instances). Anything else parses to nothing.

The spot warning is sent two minutes before the action, and its event
``time`` says when it was sent: the parser adds :data:`SPOT_WARNING_S`, so
the event carries the action's time as IMDS gives it. A spot warning or
rebalance recommendation without a readable ``time`` (every EventBridge event
has one) parses to nothing.
"""

from __future__ import annotations

from typing import Any

from .interruptions import (
    SPOT_WARNING_S,
    Event,
    EventParseError,
    HealthScheduledChange,
    InstanceStateChange,
    LifecycleAction,
    LifecycleTerminated,
    Rebalance,
    SpotInterruption,
    parse_time,
)
from .protocol import valid_instance_id

SPOT_WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"
TERMINATE_ACTION = "EC2 Instance-terminate Lifecycle Action"
STATE_CHANGE = "EC2 Instance State-change Notification"
HEALTH = "AWS Health Event"
GOING_STATES = frozenset({"stopping", "shutting-down", "terminated", "stopped"})


def parse_eventbridge(event: Any) -> list[Event]:
    """Every interruption an EventBridge event announces (empty: not ours, or malformed)."""
    if not isinstance(event, dict) or not isinstance(event.get("detail"), dict):
        return []
    if event.get("detail-type") == HEALTH:
        return _health(event)
    found = _ec2(event, event["detail"])
    return [found] if found is not None else []


def _ec2(event: dict[str, Any], detail: dict[str, Any]) -> Event | None:
    """The interruption an EC2 or Auto Scaling event announces, or None."""
    kind, event_id = event.get("detail-type"), str(event.get("id") or "")
    if kind == TERMINATE_ACTION:
        instance = _instance(detail.get("EC2InstanceId"))
        if detail.get("LifecycleTransition") != "autoscaling:EC2_INSTANCE_TERMINATING":
            return None
        if detail.get("Destination") == "WarmPool" or instance is None:
            return None  # back to a warm pool: stopped, not lost, and no engine was serving
        return LifecycleTerminated(
            lifecycle=_lifecycle_action(detail), instance_id=instance, event_id=event_id
        )
    instance = _instance(detail.get("instance-id"))
    if instance is None:
        return None
    if kind == STATE_CHANGE:
        state = detail.get("state")
        if not isinstance(state, str) or state not in GOING_STATES:
            return None
        return InstanceStateChange(state=state, instance_id=instance, event_id=event_id)
    sent = _sent_at(event)
    if sent is None:
        return None
    if kind == SPOT_WARNING:
        action = str(detail.get("instance-action") or "")
        at = sent if action == "hibernate" else sent + SPOT_WARNING_S  # hibernation: no warning
        return SpotInterruption(action=action, time=at, instance_id=instance, event_id=event_id)
    if kind == REBALANCE:
        return Rebalance(notice_time=sent, instance_id=instance, event_id=event_id)
    return None


def _health(event: dict[str, Any]) -> list[Event]:
    """An AWS Health scheduled change for EC2 instances: each affected instance."""
    detail = event["detail"]
    if event.get("source") != "aws.health":
        return []
    if detail.get("service") != "EC2" or detail.get("eventTypeCategory") != "scheduledChange":
        return []
    entities, resources = detail.get("affectedEntities"), event.get("resources")
    values = [e.get("entityValue") for e in _list(entities) if isinstance(e, dict)]
    if not values:  # the entities are optional in the schema; resources name them too
        values = _list(resources)
    values = [v for v in values if isinstance(v, str)]
    code, arn = str(detail.get("eventTypeCode") or ""), str(detail.get("eventArn") or "")
    event_id = str(event.get("id") or "")
    instances = [i for i in (_instance(v) for v in dict.fromkeys(values)) if i is not None]
    return [HealthScheduledChange(code, arn, instance_id=i, event_id=event_id) for i in instances]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _lifecycle_action(detail: dict[str, Any]) -> LifecycleAction | None:
    group, hook = detail.get("AutoScalingGroupName"), detail.get("LifecycleHookName")
    token = detail.get("LifecycleActionToken")
    if not (isinstance(group, str) and group and isinstance(hook, str) and hook):
        return None
    if not isinstance(token, str):
        return None
    return LifecycleAction(group, hook, token)


def _instance(value: Any) -> str | None:
    """The instance id, if ``value`` is one (it goes into router URLs)."""
    return value if isinstance(value, str) and valid_instance_id(value) else None


def _sent_at(event: dict[str, Any]) -> float | None:
    try:
        return parse_time(str(event["time"]))
    except (KeyError, EventParseError):
        return None
