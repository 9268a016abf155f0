"""IMDS documents as interruption events (:mod:`.interruptions`), the agent's road.

Each parser takes the body IMDS returned for one path (``None`` = 404 = no
event) and returns the events it describes. IMDS documents do not name the
instance: the events leave ``instance_id`` empty, meaning the node that read
them. A body that is not the documented shape raises :class:`EventParseError`.
"""

from __future__ import annotations

import json
from typing import Any

from .interruptions import (
    EventParseError,
    LifecycleTerminated,
    Rebalance,
    ScheduledMaintenance,
    SpotInterruption,
    parse_time,
)


def _json(body: str, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise EventParseError(f"{what}: not JSON: {body[:80]!r}") from None


def parse_instance_action(body: str | None) -> SpotInterruption | None:
    """``spot/instance-action``: ``{"action": "terminate", "time": "..."}``."""
    if body is None or not body.strip():
        return None
    doc = _json(body, "spot/instance-action")
    if not isinstance(doc, dict) or "action" not in doc or "time" not in doc:
        raise EventParseError(f"spot/instance-action: unexpected document {doc!r}")
    return SpotInterruption(action=str(doc["action"]), time=parse_time(str(doc["time"])))


def parse_rebalance(body: str | None) -> Rebalance | None:
    """``events/recommendations/rebalance``: ``{"noticeTime": "..."}``."""
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
