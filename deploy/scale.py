"""``spotrelay scale N``: resize the GPU pool, then wait for N ready nodes.

The group's desired capacity is not Terraform's after creation (it is in the
group's ``ignore_changes``: scaling policies, the controller and operators own
it), so changing ``pool.desired_capacity`` and re-running ``up`` moves
nothing. ``scale`` calls SetDesiredCapacity within the group's min/max — a
size outside them is refused with the range, because Auto Scaling would
refuse it too and the fix (``pool.min_size`` / ``max_size`` and ``up``) is
the operator's.
"""

from __future__ import annotations

from typing import Any


class ScaleError(RuntimeError):
    """The resize cannot be done as asked; the message says why and what to change."""


def set_desired(asg: Any, name: str, n: int) -> tuple[int, int, int]:
    """Set the group's desired capacity to ``n``; (previous desired, min, max)."""
    groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not groups:
        raise ScaleError(f"Auto Scaling group {name!r} not found")
    g = groups[0]
    low, high, before = g["MinSize"], g["MaxSize"], g["DesiredCapacity"]
    if not low <= n <= high:
        raise ScaleError(
            f"{n} is outside {name}'s range {low}..{high}: set pool.min_size/pool.max_size "
            "and run spotrelay up first"
        )
    asg.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=n, HonorCooldown=False)
    return before, low, high


def settled(report: Any, n: int) -> bool:
    """``n`` nodes ready and no more than ``n`` left that are not on their way out."""
    staying = [
        r
        for r in report.instances
        if not str(r.get("lifecycle_state", "")).startswith(("Terminat", "Detach"))
    ]
    return report.desired == n and report.ready >= n and len(staying) <= n
