"""The GPU pool instance by instance: what the ASG, EC2 and the routers each say, joined.

``spotrelay status`` and ``spotrelay up``'s wait show one row per instance of
the group: spot or on-demand, type, AZ, ASG lifecycle state and health, and
whether the routers have it registered (ready or draining). An instance older
than the launch hook's timeout that no router knows is flagged
``never registered`` — the runbook's "a node never becomes ready". The last
scaling activities of the group follow, spot interruptions marked.

:func:`join_instances` and :func:`classify_activity` are pure (clock passed
in); :func:`instance_details` and :func:`scaling_activities` are the AWS calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

NEVER_REGISTERED = "never registered"
DEFAULT_NEVER_AFTER_S = 1200.0  # the gpu-pool module's default launch hook timeout

# Scaling-activity text EC2 Auto Scaling writes when a spot node is taken away
# (interruption notice, rebalance recommendation); matched loosely, in any field.
INTERRUPTION = re.compile(r"spot.{0,20}interruption|interruption notice|rebalance", re.I)


def instance_details(
    client: Callable[[str], Any], instance_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """``{instance_id: {market, launched_at}}`` from ``DescribeInstances``."""
    if not instance_ids:
        return {}
    details: dict[str, dict[str, Any]] = {}
    paginator = client("ec2").get_paginator("describe_instances")
    for page in paginator.paginate(InstanceIds=instance_ids):
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                launched = inst.get("LaunchTime")
                details[inst["InstanceId"]] = {
                    "market": "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand",
                    "launched_at": launched.timestamp() if launched is not None else None,
                }
    return details


def scaling_activities(
    client: Callable[[str], Any], group: str, limit: int = 10
) -> list[dict[str, Any]]:
    """The group's last ``limit`` scaling activities, newest first, interruptions marked."""
    reply = client("autoscaling").describe_scaling_activities(
        AutoScalingGroupName=group, MaxRecords=limit
    )
    return [classify_activity(a) for a in reply.get("Activities", [])[:limit]]


def classify_activity(activity: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(str(activity.get(k) or "") for k in ("Description", "Cause", "StatusMessage"))
    start = activity.get("StartTime")
    return {
        "at": start.isoformat() if start is not None and hasattr(start, "isoformat") else start,
        "status": activity.get("StatusCode", "?"),
        "description": activity.get("Description", ""),
        "cause": activity.get("Cause", ""),
        "spot_interruption": bool(INTERRUPTION.search(text)),
    }


def _router_view(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Router nodes by EC2 instance id (the report's ``instance_id``, else the node id)."""
    view: dict[str, dict[str, Any]] = {}
    for node in nodes:
        key = node.get("instance_id") or node.get("id")
        if key:
            view[str(key)] = node
    return view


def join_instances(
    instances: list[dict[str, Any]],
    details: dict[str, dict[str, Any]],
    nodes: list[dict[str, Any]] | None,
    *,
    never_after_s: float,
    now: float,
) -> list[dict[str, Any]]:
    """One row per ASG instance with the routers' view; ``nodes`` None: router unknown."""
    routed = _router_view(nodes or [])
    rows = []
    for inst in instances:
        info = details.get(inst["id"], {})
        node = routed.get(inst["id"])
        launched = info.get("launched_at")
        age = None if launched is None else max(0.0, now - launched)
        router = node.get("state") if node else None
        note = ""
        if nodes is not None and node is None and age is not None and age > never_after_s:
            note = NEVER_REGISTERED
        rows.append(
            {
                **inst,
                "market": info.get("market", "?"),
                "age_s": None if age is None else round(age),
                "router_state": router if nodes is not None else "unknown",
                "registered": node is not None,
                "note": note,
            }
        )
    return rows


def ready_count(rows: list[dict[str, Any]]) -> int:
    """Instances of the group that a router has as ``ready``."""
    return sum(1 for r in rows if r.get("router_state") == "ready")


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def render_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "  {:<20} {:<9} {:<13} {:<11} {:<18} {:<9} {:<10} {:>5}  {}".format(
            "instance", "market", "type", "az", "lifecycle", "health", "router", "age", ""
        )
    ]
    for r in rows:
        lines.append(
            "  {:<20} {:<9} {:<13} {:<11} {:<18} {:<9} {:<10} {:>5}  {}".format(
                r["id"],
                r["market"],
                r.get("type", "?"),
                r.get("az", "?"),
                r.get("lifecycle_state", "?"),
                r.get("health", "?"),
                r["router_state"] or "-",
                _age(r["age_s"]),
                r["note"],
            ).rstrip()
        )
    return lines


def render_activities(activities: list[dict[str, Any]]) -> list[str]:
    if not activities:
        return ["  no recent scaling activities"]
    lines = []
    for a in activities:
        mark = "SPOT " if a["spot_interruption"] else ""
        lines.append(f"  {a['at']}  {a['status']:<12} {mark}{a['description']}")
        if a["cause"]:
            lines.append(f"      cause: {a['cause']}")
    return lines
