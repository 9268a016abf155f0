"""The on-demand fallback decisions, event parsing and dedupe, with a fake clock (no I/O).

Scaling activities and EventBridge events are the documented JSON shapes,
stored under ``tests/fixtures``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrelay.controller.activities import LaunchAttempt, classify, launch_attempts
from spotrelay.controller.events import Kind, parse_event
from spotrelay.controller.fallback import (
    Action,
    FallbackDecider,
    FallbackPolicy,
    FallbackState,
    Observation,
)
from spotrelay.controller.interruptions import DrainResult, InterruptionHandler, Outcome
from spotrelay.controller.settings import SettingError, from_env

FIXTURES = Path(__file__).parent / "fixtures"


def event(name: str, **detail: str) -> dict:
    doc = json.loads((FIXTURES / "eventbridge" / f"{name}.json").read_text())
    doc["detail"].update(detail)
    return doc


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fail(at: float) -> LaunchAttempt:
    return LaunchAttempt(at, ok=False, spot_shortage=True, message="InsufficientInstanceCapacity")


def ok(at: float) -> LaunchAttempt:
    return LaunchAttempt(at, ok=True)


# -- scaling activities ---------------------------------------------------------------


def test_documented_activities_classify_spot_shortages_only() -> None:
    doc = json.loads(
        (FIXTURES / "eventbridge" / "scaling-activities-spot-shortage.json").read_text()
    )
    attempts = launch_attempts(doc["Activities"])
    assert len(attempts) == 4  # the termination is not a launch
    assert [a.ok for a in attempts] == [True, False, False, False]  # oldest first
    assert [a.spot_shortage for a in attempts] == [False, False, True, True]  # quota != shortage
    assert "UnfulfillableCapacity" in attempts[2].message
    assert attempts[3].at == datetime.fromisoformat("2026-11-29T19:46:15.938+00:00").timestamp()


def test_activity_in_progress_is_neither_success_nor_failure() -> None:
    assert (
        classify(
            {
                "Description": "Launching a new EC2 instance: i-0a1b2c3d4e5f60718",
                "StartTime": "2026-11-29T19:20:03Z",
                "StatusCode": "InProgress",
            }
        )
        is None
    )


# -- decisions -------------------------------------------------------------------------

POLICY = FallbackPolicy(
    fallback_after_s=300, recover_after_s=900, step_interval_s=600, max_on_demand=2
)


def test_shortage_fallback_and_recovery_step_by_step() -> None:
    clock = Clock()
    decider = FallbackDecider(POLICY, clock)
    t0 = clock.now
    attempts = [ok(t0 - 3600), fail(t0)]
    state = FallbackState()

    # Spot just started failing: wait fallback_after_s before acting.
    d = decider.decide(Observation(0, attempts, 3), state)
    assert (d.action, d.target_base) == (Action.HOLD, 0)

    # Failing for 300 s: raise the base by one, with the reason.
    clock.advance(300)
    attempts.append(fail(clock.now - 10))
    d = decider.decide(Observation(0, attempts, 2), d.state)
    assert (d.action, d.target_base) == (Action.RAISE, 1)
    assert (
        "spot launches failing for 300s" in d.reason and "InsufficientInstanceCapacity" in d.reason
    )
    assert d.state.changed_at == clock.now

    # Still failing, but the on-demand node is cold-starting: one step at a time.
    clock.advance(120)
    attempts.append(fail(clock.now))
    d = decider.decide(Observation(1, attempts, 2), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 1) and "next step in 480s" in d.reason

    clock.advance(480)
    d = decider.decide(Observation(1, attempts, 2), d.state)
    assert (d.action, d.target_base) == (Action.RAISE, 2)

    # At max_on_demand: hold however long spot keeps failing.
    clock.advance(3600)
    attempts.append(fail(clock.now))
    d = decider.decide(Observation(2, attempts, 3), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 2) and "max_on_demand" in d.reason

    # Spot comes back: no failure for recover_after_s, then lower one step per interval.
    clock.advance(899)
    d = decider.decide(Observation(2, attempts, 3), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 2)
    clock.advance(1)
    d = decider.decide(Observation(2, attempts, 3), d.state)
    assert (d.action, d.target_base) == (Action.LOWER, 1)
    assert "no spot failure for 900s" in d.reason
    attempts.append(ok(clock.now + 30))  # the group replaced one on-demand node with spot
    clock.advance(600)
    d = decider.decide(Observation(1, attempts, 3), d.state)
    assert (d.action, d.target_base) == (Action.LOWER, 0)
    clock.advance(600)
    d = decider.decide(Observation(0, attempts, 3), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 0) and "configured value" in d.reason


def test_a_success_ends_the_failure_streak() -> None:
    clock = Clock()
    decider = FallbackDecider(POLICY, clock)
    attempts = [fail(clock.now - 1000), ok(clock.now - 200), fail(clock.now - 100)]
    d = decider.decide(Observation(0, attempts, 3), FallbackState())
    assert d.action is Action.HOLD  # failing for 100 s only, not 1000 s


def test_too_few_ready_nodes_for_long_enough_raises() -> None:
    clock = Clock()
    policy = FallbackPolicy(fallback_after_s=300, min_ready=2, max_on_demand=3)
    decider = FallbackDecider(policy, clock)
    d = decider.decide(Observation(0, [], 1), FallbackState())
    assert d.action is Action.HOLD and d.state.short_since == clock.now
    clock.advance(300)
    d = decider.decide(Observation(0, [], 1), d.state)
    assert (d.action, d.target_base) == (Action.RAISE, 1)
    assert "ready nodes 1 < min_ready 2 for 300s" in d.reason
    # Enough nodes again: the shortage clock resets.
    d = decider.decide(Observation(1, [], 2), d.state)
    assert d.state.short_since is None


def test_unknown_ready_count_never_triggers() -> None:
    clock = Clock()
    decider = FallbackDecider(FallbackPolicy(fallback_after_s=0, min_ready=2), clock)
    d = decider.decide(Observation(0, [], None), FallbackState())
    assert d.action is Action.HOLD and d.state.short_since is None


def test_two_runs_from_the_same_observation_decide_the_same_absolute_value() -> None:
    clock = Clock()
    attempts = [fail(clock.now - 400)]
    a = FallbackDecider(POLICY, clock).decide(Observation(0, attempts, 1), FallbackState())
    b = FallbackDecider(POLICY, clock).decide(Observation(0, attempts, 1), FallbackState())
    assert a == b and a.target_base == 1


def test_never_lowers_below_the_configured_base() -> None:
    clock = Clock()
    policy = FallbackPolicy(base_on_demand=1, max_on_demand=3, recover_after_s=0, step_interval_s=0)
    d = FallbackDecider(policy, clock).decide(Observation(1, [], 3), FallbackState())
    assert (d.action, d.target_base) == (Action.HOLD, 1)


# -- events and dedupe -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "detail", "kind"),
    [
        ("spot-interruption-warning", {}, Kind.SPOT_INTERRUPTION),
        ("rebalance-recommendation", {}, Kind.REBALANCE),
        ("instance-terminate-lifecycle-action", {}, Kind.LIFECYCLE_TERMINATE),
        ("instance-state-change", {"state": "stopping"}, Kind.STATE_CHANGE),
        ("instance-state-change", {"state": "terminated"}, Kind.STATE_CHANGE),
    ],
)
def test_documented_events_parse(name: str, detail: dict, kind: Kind) -> None:
    notice = parse_event(event(name, **detail))
    assert notice is not None and notice.kind is kind
    assert notice.instance_id == "i-1234567890abcdef0"


def test_events_that_announce_no_loss_are_dropped() -> None:
    assert parse_event(event("instance-state-change")) is None  # "pending"
    assert parse_event(event("instance-terminate-lifecycle-action", Destination="WarmPool")) is None
    assert parse_event(event("spot-interruption-warning", **{"instance-id": "../nodes"})) is None
    assert parse_event({"detail-type": "Scheduled Event", "detail": {}}) is None


class FakeRouters:
    """Stands in for the routers' registry: which instances are draining."""

    def __init__(self, instances: set[str]) -> None:
        self.instances = instances
        self.draining: set[str] = set()
        self.calls = 0

    def drain_instance(self, instance_id: str) -> DrainResult:
        self.calls += 1
        if instance_id not in self.instances:
            return DrainResult(0, 0)
        already = instance_id in self.draining
        self.draining.add(instance_id)
        return DrainResult(newly=0 if already else 1, already=1 if already else 0)


def test_the_same_notice_from_four_events_drains_once() -> None:
    routers = FakeRouters({"i-1234567890abcdef0"})
    handler = InterruptionHandler(routers, clock=Clock())
    outcomes = [
        handler.handle(event("spot-interruption-warning"))[0],
        handler.handle(event("spot-interruption-warning"))[0],  # SQS redelivery
        handler.handle(event("instance-terminate-lifecycle-action"))[0],
        handler.handle(event("instance-state-change", state="shutting-down"))[0],
    ]
    assert outcomes == [Outcome.DRAINED, Outcome.DUPLICATE, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert routers.calls == 1


def test_node_drained_by_its_agent_first_is_a_duplicate() -> None:
    routers = FakeRouters({"i-1234567890abcdef0"})
    routers.draining.add("i-1234567890abcdef0")  # the agent reported draining
    handler = InterruptionHandler(routers, clock=Clock())
    assert handler.handle(event("spot-interruption-warning"))[0] is Outcome.DUPLICATE


def test_rebalance_is_ignored_unless_configured_and_unknown_instances_are_not_ours() -> None:
    routers = FakeRouters(set())
    handler = InterruptionHandler(routers, clock=Clock())
    assert handler.handle(event("rebalance-recommendation"))[0] is Outcome.IGNORED
    assert routers.calls == 0
    handler = InterruptionHandler(routers, drain_on_rebalance=True, clock=Clock())
    assert handler.handle(event("rebalance-recommendation"))[0] is Outcome.NOT_REGISTERED
    assert handler.handle({"not": "an event"})[0] is Outcome.MALFORMED


def test_dedupe_memory_expires() -> None:
    clock = Clock()
    routers = FakeRouters({"i-1234567890abcdef0"})
    handler = InterruptionHandler(routers, remember_s=60, clock=clock)
    handler.handle(event("spot-interruption-warning"))
    clock.advance(61)
    # Forgotten here, but the routers still know the node is draining: no second drain.
    assert handler.handle(event("spot-interruption-warning"))[0] is Outcome.DUPLICATE
    assert routers.calls == 2


# -- settings ---------------------------------------------------------------------------


def test_settings_errors_name_the_variable() -> None:
    with pytest.raises(SettingError, match=r"^SPOTRELAY_ASG_NAME: required"):
        from_env({})
    with pytest.raises(SettingError, match=r"^SPOTRELAY_FALLBACK_AFTER_S = 'soon': not a number"):
        from_env({"SPOTRELAY_ASG_NAME": "llm", "SPOTRELAY_FALLBACK_AFTER_S": "soon"})
    with pytest.raises(SettingError, match=r"^SPOTRELAY_ROUTER_URLS = '10.0.0.1:8080'"):
        from_env({"SPOTRELAY_ASG_NAME": "llm", "SPOTRELAY_ROUTER_URLS": "10.0.0.1:8080"})
    with pytest.raises(SettingError, match=r"^SPOTRELAY_MAX_ON_DEMAND"):
        from_env(
            {
                "SPOTRELAY_ASG_NAME": "llm",
                "SPOTRELAY_MAX_ON_DEMAND": "0",
                "SPOTRELAY_BASE_ON_DEMAND": "1",
            }
        )
    s = from_env({"SPOTRELAY_ASG_NAME": "llm", "SPOTRELAY_ROUTER_URLS": "http://a:1, http://b:2"})
    assert s.router_urls == ("http://a:1", "http://b:2") and s.pool == "llm"


def test_no_second_step_once_the_first_stopped_the_failures() -> None:
    clock = Clock()
    decider = FallbackDecider(POLICY, clock)
    attempts = [fail(clock.now - 400), fail(clock.now - 10)]
    d = decider.decide(Observation(0, attempts, 2), FallbackState())
    assert d.action is Action.RAISE
    clock.advance(600)  # the on-demand node filled the gap: no spot attempt, no failure
    d = decider.decide(Observation(1, attempts, 3), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 1)
    assert "in fallback: last spot failure 610s ago" in d.reason


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=900),  # seconds until the next run
            st.lists(st.booleans(), max_size=3),  # launch attempts since (True = ok)
            st.one_of(st.none(), st.integers(min_value=0, max_value=5)),  # ready nodes
        ),
        max_size=30,
    ),
    base=st.integers(min_value=0, max_value=2),
    extra=st.integers(min_value=0, max_value=3),
)
@settings(max_examples=200, deadline=None)
def test_decisions_stay_in_bounds_one_step_at_a_time(
    steps: list[tuple[float, list[bool], int | None]], base: int, extra: int
) -> None:
    """Whatever happens, the base moves by at most one per decision, within its bounds."""
    clock = Clock()
    policy = FallbackPolicy(
        fallback_after_s=300,
        recover_after_s=900,
        step_interval_s=600,
        min_ready=2,
        base_on_demand=base,
        max_on_demand=base + extra,
    )
    decider = FallbackDecider(policy, clock)
    current, state, attempts, last_change = base, FallbackState(), [], None
    for wait, launches, ready in steps:
        clock.advance(wait)
        attempts += [ok(clock.now) if good else fail(clock.now) for good in launches]
        d = decider.decide(Observation(current, attempts, ready), state)
        assert base <= d.target_base <= base + extra
        assert abs(d.target_base - current) <= 1
        if d.changes:
            if last_change is not None:
                assert clock.now - last_change >= policy.step_interval_s
            last_change = clock.now
        current, state = d.target_base, d.state
