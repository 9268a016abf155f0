"""The agent's event path without I/O: the event store (dedupe across sightings,
sources and restarts; pruning; planned drains) and the event policy.

IMDS documents and the EventBridge event are the shapes AWS documents. The
second source (EventBridge through SQS) is the controller's today; its events
come from the same parser (``core.eventbridge_events``), to show the store
dedupes them with what IMDS shows.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from spotrelay.agent.eventstore import EventId, EventStore
from spotrelay.agent.monitors import MAINTENANCE, SPOT
from spotrelay.agent.policy import Action, EventPolicy
from spotrelay.core.eventbridge_events import parse_eventbridge
from spotrelay.core.imds_events import parse_instance_action, parse_rebalance, parse_scheduled
from spotrelay.core.interruptions import (
    LifecycleTerminated,
    MaintenanceCanceled,
    Rebalance,
    ScheduledMaintenance,
    SpotInterruption,
    parse_time,
)
from tests.support.clock import Clock
from tests.support.controller import documented

START = 1_777_636_800.0  # where the hand-moved clock starts (wall-clock seconds)

INSTANCE = "i-1234567890abcdef0"

# spot/instance-action, as IMDS shows it for two minutes
INSTANCE_ACTION = '{"action": "terminate", "time": "2026-05-01T12:02:00Z"}'

# The EventBridge event for the same interruption: "time" is when the warning was sent.
EVENTBRIDGE_WARNING: dict[str, Any] = {
    "version": "0",
    "id": "12345678-1234-1234-1234-123456789012",
    "detail-type": "EC2 Spot Instance Interruption Warning",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2026-05-01T12:00:01Z",
    "region": "us-east-2",
    "resources": [f"arn:aws:ec2:us-east-2:123456789012:instance/{INSTANCE}"],
    "detail": {"instance-id": INSTANCE, "instance-action": "terminate"},
}

SCHEDULED = json.dumps(
    [
        {
            "NotBefore": "21 Jan 2030 09:00:43 GMT",
            "Code": "system-reboot",
            "Description": "scheduled reboot",
            "EventId": "instance-event-0d59937288b749b32",
            "NotAfter": "21 Jan 2030 09:17:23 GMT",
            "State": "active",
        }
    ]
)


def spot() -> SpotInterruption:
    event = parse_instance_action(INSTANCE_ACTION)
    assert event is not None
    return event


# ------------------------------------------------------------------- dedupe


def test_one_notice_seen_many_times_is_new_once() -> None:
    store = EventStore(INSTANCE, clock=Clock(START))
    monitor = SPOT
    assert store.observe(monitor.name, monitor.observe(INSTANCE_ACTION)) == [spot()]
    for _ in range(100):
        assert store.observe(monitor.name, monitor.observe(INSTANCE_ACTION)) == []
    (record,) = store.records()
    assert record.id == EventId(
        "spot_interruption", INSTANCE, "spot:terminate:2026-05-01T12:02:00Z"
    )
    assert record.sightings == 101 and record.sources == {"spot"}


def test_a_new_notice_time_is_a_new_event_and_instances_are_kept_apart() -> None:
    store = EventStore(INSTANCE, clock=Clock(START))
    first = spot()
    later = SpotInterruption(action="terminate", time=first.time + 120)
    assert store.add(first, "spot") is first
    assert store.add(later, "spot") is later  # minutes apart: another notice
    assert store.add(first, "sqs", instance_id="i-0another") is first  # another instance
    assert len(store) == 3


def test_eventbridge_and_imds_reports_of_one_interruption_are_one_event() -> None:
    (event,) = parse_eventbridge(EVENTBRIDGE_WARNING)
    assert isinstance(event, SpotInterruption) and event.instance_id == INSTANCE
    assert event.time == spot().time + 1  # sent two minutes ahead, a second late
    assert event.key != spot().key  # stamped a second apart

    store = EventStore(INSTANCE, clock=Clock(START))
    assert store.observe("spot", [spot()]) == [spot()]  # IMDS first
    assert store.add(event, "sqs") is None  # the event names the instance
    assert store.add(event, "sqs", instance_id="i-0another") is event

    store = EventStore(INSTANCE, clock=Clock(START))
    assert store.add(event, "sqs") is event  # the queue first
    assert store.observe("spot", [spot()]) == []
    assert store.observe("spot", [spot()]) == []  # later sightings match by alias
    (record, *_) = store.records()
    assert record.sources == {"sqs", "spot"} and record.sightings == 3


def test_rebalance_and_target_state_match_across_sources() -> None:
    store = EventStore(INSTANCE, clock=Clock(START))
    imds = parse_rebalance('{"noticeTime": "2026-11-29T20:00:00Z"}')
    assert imds is not None and store.add(imds, "rebalance") is imds
    doc = documented("rebalance-recommendation")
    doc["time"] = "2026-11-29T20:00:01Z"
    (queued,) = parse_eventbridge(doc)
    assert queued == Rebalance(
        notice_time=imds.notice_time + 1, instance_id=INSTANCE, event_id=doc["id"]
    )
    assert store.add(queued, "sqs") is None
    (terminate,) = parse_eventbridge(documented("instance-terminate-lifecycle-action"))
    assert store.add(LifecycleTerminated(), "lifecycle") == LifecycleTerminated()
    assert store.add(terminate, "sqs") is None


def test_a_restored_drain_keeps_its_events_from_acting_twice() -> None:
    store = EventStore(INSTANCE, clock=Clock(START))
    store.remember("spot_interruption", spot().key)
    assert store.observe("spot", [spot()]) == []
    assert store.observe("lifecycle", [LifecycleTerminated()]) == [LifecycleTerminated()]


def test_concurrent_sources_hand_one_event_over_once() -> None:
    store = EventStore(INSTANCE, clock=Clock(START))
    new: list[object] = []

    def source(name: str) -> None:
        for _ in range(500):
            new.extend(store.observe(name, [spot()]))

    threads = [threading.Thread(target=source, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert new == [spot()]


# ------------------------------------------------------------------ pruning


def test_events_nobody_reports_any_more_are_pruned() -> None:
    clock = Clock(START)
    store = EventStore(INSTANCE, clock=clock, retention_s=600)
    store.observe("spot", [spot()])
    rebalance = Rebalance(notice_time=clock.now)
    store.observe("rebalance", [rebalance])
    for _ in range(10):  # the notice stays listed; the recommendation is not read again
        clock.now += 100
        store.observe("spot", [spot()])
    assert [r.event for r in store.records()] == [spot()]
    assert store.observe("rebalance", [rebalance]) == [rebalance]  # new again once forgotten


def test_a_planned_drain_is_kept_until_due() -> None:
    clock = Clock(START)
    store = EventStore(INSTANCE, clock=clock, retention_s=60)
    (maintenance,) = parse_scheduled(SCHEDULED)
    store.add(maintenance, "sqs", instance_id=INSTANCE)  # reported once, then silence
    store.schedule(maintenance, clock.now + 3600)
    clock.now += 1800
    assert store.due() == [] and len(store) == 1
    clock.now += 1800
    assert store.due() == [maintenance]
    assert store.due() == []  # handed back once
    clock.now += 61
    store.due()
    assert len(store) == 0


# ----------------------------------------------------- withdrawal and plans


def test_a_withdrawn_scheduled_event_is_canceled_once_and_its_plan_dropped() -> None:
    clock = Clock(START)
    store, monitor = EventStore(INSTANCE, clock=clock), MAINTENANCE
    policy = EventPolicy(maintenance_lead_s=900)
    (event,) = store.observe(monitor.name, monitor.observe(SCHEDULED))
    decision = policy.decide(event, clock.now)
    assert decision.action is Action.SCHEDULE and decision.at is not None
    store.schedule(event, decision.at)
    (canceled,) = store.observe(monitor.name, monitor.observe("[]"))
    assert canceled == MaintenanceCanceled(original_key=event.key)
    assert store.observe(monitor.name, monitor.observe(None)) == []  # once
    decision = policy.decide(canceled, clock.now)
    assert decision.action is Action.CANCEL and decision.cancels == event.key
    assert store.unschedule(decision.cancels) is True
    assert store.unschedule(decision.cancels) is False
    # The same entry listed again is still the same, already handled, event.
    assert store.observe(monitor.name, monitor.observe(SCHEDULED)) == []
    clock.now = event.not_before
    assert store.due() == []


def test_a_notice_that_vanishes_is_not_a_retraction() -> None:
    store = EventStore(INSTANCE, clock=Clock(START))
    store.observe("spot", [spot()])
    store.observe("lifecycle", [LifecycleTerminated()])
    assert store.observe("spot", []) == []
    assert store.observe("lifecycle", []) == []
    assert store.observe("spot", [spot()]) == []  # and not new when it is back


# ------------------------------------------------------------------- policy


def test_policy_decides_each_kind() -> None:
    now = parse_time("2026-05-01T12:00:00Z")
    quiet, eager = EventPolicy(), EventPolicy(on_rebalance=True, maintenance_lead_s=600)
    for event in (spot(), LifecycleTerminated()):
        assert quiet.decide(event, now).action is Action.DRAIN
    rebalance = Rebalance(notice_time=now)
    assert quiet.decide(rebalance, now).action is Action.REPORT
    assert eager.decide(rebalance, now).action is Action.DRAIN
    soon = ScheduledMaintenance(code="system-reboot", not_before=now + 300)
    later = ScheduledMaintenance(code="system-reboot", not_before=now + 3600)
    assert eager.decide(soon, now).action is Action.DRAIN
    plan = eager.decide(later, now)
    assert plan.action is Action.SCHEDULE and plan.at == now + 3000
    assert "2026-05-01T12:50:00Z" in plan.why
    cancel = eager.decide(MaintenanceCanceled(original_key=later.key), now)
    assert cancel.action is Action.CANCEL and cancel.cancels == later.key
