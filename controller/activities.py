"""Auto Scaling scaling activities, read as launch attempts that succeeded or failed.

``DescribeScalingActivities`` is the only place the group says *why* it could
not launch: a failed activity's ``StatusMessage`` carries the EC2 error, e.g.
``Could not launch Spot Instances. InsufficientInstanceCapacity - There is no
Spot capacity available that matches your request. Launching EC2 instance
failed.`` We classify on those documented error codes and phrases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# EC2 error codes and phrases of a spot launch that failed for want of capacity
# (or of an acceptable price): the signals for falling back to on-demand.
SPOT_FAILURE_MARKERS = (
    "InsufficientInstanceCapacity",
    "UnfulfillableCapacity",
    "InsufficientCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "Could not launch Spot Instances",
    "There is no Spot capacity",
    "capacity-not-available",
    "capacity-oversubscribed",
    "price-too-low",
)
FAILED_CODES = frozenset({"Failed", "Cancelled"})
LAUNCH_PREFIX = "Launching a new EC2 instance"


@dataclass(frozen=True)
class LaunchAttempt:
    """One launch activity: when, whether it worked, and (if not) whether spot ran dry."""

    at: float  # epoch seconds (StartTime)
    ok: bool
    spot_shortage: bool = False
    message: str = ""


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def classify(activity: Mapping[str, Any]) -> LaunchAttempt | None:
    """A :class:`LaunchAttempt` for a launch activity; None for anything else (terminations)."""
    description = str(activity.get("Description") or "")
    if not description.startswith(LAUNCH_PREFIX):
        return None
    at = _epoch(activity.get("StartTime"))
    code = str(activity.get("StatusCode") or "")
    if at is None or code not in FAILED_CODES | {"Successful"}:
        return None  # still in progress: neither a success nor a failure yet
    message = str(activity.get("StatusMessage") or "")
    if code == "Successful":
        return LaunchAttempt(at, ok=True)
    text = f"{message} {description}"
    shortage = any(marker in text for marker in SPOT_FAILURE_MARKERS)
    return LaunchAttempt(at, ok=False, spot_shortage=shortage, message=message[:200])


def launch_attempts(activities: Iterable[Mapping[str, Any]]) -> list[LaunchAttempt]:
    """The launch attempts among ``activities``, oldest first."""
    attempts = [a for a in (classify(act) for act in activities) if a is not None]
    return sorted(attempts, key=lambda a: a.at)
