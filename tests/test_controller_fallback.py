"""The on-demand fallback decisions, event parsing and dedupe, with a fake clock (no I/O).

Scaling activities and EventBridge events are the documented JSON shapes,
stored under ``tests/fixtures``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrelay.controller.activities import LaunchAttempt, classify, launch_attempts
from spotrelay.controller.fallback import (
    Action,
    FallbackDecider,
    FallbackPolicy,
    FallbackState,
    Observation,
    settle_probe,
)
from spotrelay.controller.interruptions import DrainResult, InterruptionHandler, Outcome
from spotrelay.controller.lifecycle import PendingAction, Step, judge
from spotrelay.controller.routers import NodeSighting
from spotrelay.controller.settings import SettingError, from_env
from spotrelay.core.eventbridge_events import parse_eventbridge
from spotrelay.core.interruptions import (
    SPOT_WARNING_S,
    Event,
    Kind,
    LifecycleAction,
    LifecycleTerminated,
    SpotInterruption,
    parse_time,
)
from tests.support.clock import Clock

START = 1_000_000.0  # where the hand-moved clock starts

FIXTURES = Path(__file__).parent / "fixtures"


def event(name: str, **detail: str) -> dict:
    doc = json.loads((FIXTURES / "eventbridge" / f"{name}.json").read_text())
    doc["detail"].update(detail)
    return doc


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

POLICY = FallbackPolicy(fallback_after_s=60, recover_after_s=900, step_interval_s=600)


def pool(base: int, attempts: list[LaunchAttempt], spot_live: int, desired: int = 4) -> Observation:
    """A 4-node pool with ``spot_live`` spot instances and the routers' ready count unknown."""
    return Observation(base, list(attempts), None, desired=desired, spot_live=spot_live)


def test_a_drought_moves_every_missing_node_to_on_demand_at_once_and_back() -> None:
    clock = Clock(START)
    decider = FallbackDecider(POLICY, clock)
    attempts = [ok(clock.now - 3600), fail(clock.now)]  # 3 of 4 spot nodes reclaimed

    # Spot just started failing: wait fallback_after_s (one schedule period) before acting.
    d = decider.decide(pool(0, attempts, spot_live=1), FallbackState())
    assert (d.action, d.target_base) == (Action.HOLD, 0)

    # Still failing a period later: all three missing nodes go on-demand in one decision.
    clock.advance(60)
    attempts.append(fail(clock.now - 5))
    d = decider.decide(pool(0, attempts, spot_live=1), d.state)
    assert (d.action, d.target_base) == (Action.RAISE, 3)
    assert "spot launches failing for 60s" in d.reason
    assert "InsufficientInstanceCapacity" in d.reason and "3 node(s) missing on spot" in d.reason

    # The next runs, while the on-demand nodes boot and spot retries fail: the same target.
    attempts += [ok(clock.now + 10)] * 3 + [fail(clock.now + 20)]
    for _ in range(3):
        clock.advance(60)
        d = decider.decide(pool(3, attempts, spot_live=1), d.state)
        assert (d.action, d.target_base) == (Action.HOLD, 3), d.reason

    # The last spot node is reclaimed too and its replacement fails: it follows at once.
    attempts.append(fail(clock.now))
    clock.advance(60)
    attempts.append(fail(clock.now - 1))
    d = decider.decide(pool(3, attempts, spot_live=0), d.state)
    assert (d.action, d.target_base) == (Action.RAISE, 4) and "1 node(s) missing" in d.reason

    # Spot comes back: no failure for recover_after_s, then one probe, then a step each
    # step_interval_s (each step is launch-before-terminate: spot first, then the drain).
    attempts.append(ok(clock.now + 10))
    last_failure = max(a.at for a in attempts if a.spot_shortage)
    clock.now = last_failure + 899
    d = decider.decide(pool(4, attempts, spot_live=0), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 4)
    clock.advance(1)
    d = decider.decide(pool(4, attempts, spot_live=0), d.state)
    assert (d.action, d.target_base) == (Action.LOWER, 3) and "(probe)" in d.reason
    for base in (3, 2, 1):
        attempts.append(ok(clock.now + 30))  # the spot replacement launched
        clock.advance(600)
        d = decider.decide(pool(base, attempts, spot_live=4 - base), d.state)
        assert (d.action, d.target_base) == (Action.LOWER, base - 1)
    clock.advance(600)
    d = decider.decide(pool(0, attempts, spot_live=4), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 0) and "configured value" in d.reason


def test_the_raise_never_swaps_a_running_spot_node_and_stops_at_max_on_demand() -> None:
    clock = Clock(START)
    attempts = [fail(clock.now - 120), fail(clock.now - 5)]
    d = FallbackDecider(POLICY, clock).decide(pool(0, attempts, spot_live=3), FallbackState())
    assert d.target_base == 1  # 3 spot nodes still serve: only the missing one
    capped = FallbackDecider(replace(POLICY, max_on_demand=2), clock)
    d = capped.decide(pool(0, attempts, spot_live=0), FallbackState())
    assert d.target_base == 2 and "(max_on_demand=2)" in d.reason
    d = capped.decide(pool(2, attempts, spot_live=0), FallbackState())
    assert (d.action, d.target_base) == (Action.HOLD, 2) and "max_on_demand=2" in d.reason
    # The default maximum is the group's desired capacity, read at each run.
    d = FallbackDecider(POLICY, clock).decide(pool(0, attempts, 0, desired=6), FallbackState())
    assert d.target_base == 6


def test_failures_while_nothing_is_missing_change_nothing() -> None:
    clock = Clock(START)
    attempts = [fail(clock.now - 120), fail(clock.now - 5)]
    d = FallbackDecider(POLICY, clock).decide(pool(1, attempts, spot_live=3), FallbackState())
    assert (d.action, d.target_base) == (Action.HOLD, 1)
    assert "on-demand already" in d.reason


def test_a_success_ends_the_failure_streak() -> None:
    clock = Clock(START)
    decider = FallbackDecider(POLICY, clock)
    attempts = [fail(clock.now - 1000), ok(clock.now - 200), fail(clock.now - 30)]
    d = decider.decide(pool(0, attempts, spot_live=3), FallbackState())
    assert d.action is Action.HOLD  # failing for 30 s only, not 1000 s


def test_too_few_ready_nodes_for_long_enough_raises() -> None:
    clock = Clock(START)
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
    clock = Clock(START)
    decider = FallbackDecider(FallbackPolicy(fallback_after_s=0, min_ready=2), clock)
    d = decider.decide(Observation(0, [], None), FallbackState())
    assert d.action is Action.HOLD and d.state.short_since is None


def test_two_runs_from_the_same_observation_decide_the_same_absolute_value() -> None:
    clock = Clock(START)
    attempts = [fail(clock.now - 400)]
    a = FallbackDecider(POLICY, clock).decide(pool(0, attempts, 2), FallbackState())
    b = FallbackDecider(POLICY, clock).decide(pool(0, attempts, 2), FallbackState())
    assert a == b and a.target_base == 2


def test_never_lowers_below_the_configured_base() -> None:
    clock = Clock(START)
    policy = FallbackPolicy(base_on_demand=1, max_on_demand=3, recover_after_s=0, step_interval_s=0)
    d = FallbackDecider(policy, clock).decide(Observation(1, [], 3), FallbackState())
    assert (d.action, d.target_base) == (Action.HOLD, 1)


# -- events and dedupe -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "detail", "kind"),
    [
        ("spot-interruption-warning", {}, Kind.SPOT_INTERRUPTION),
        ("rebalance-recommendation", {}, Kind.REBALANCE),
        ("instance-terminate-lifecycle-action", {}, Kind.LIFECYCLE_TERMINATED),
        ("instance-state-change", {"state": "stopping"}, Kind.STATE_CHANGE),
        ("instance-state-change", {"state": "terminated"}, Kind.STATE_CHANGE),
        ("instance-state-change", {"state": "stopped"}, Kind.STATE_CHANGE),
    ],
)
def test_documented_events_parse(name: str, detail: dict, kind: Kind) -> None:
    (notice,) = parse_eventbridge(event(name, **detail))
    assert notice.kind is kind
    assert notice.instance_id == "i-1234567890abcdef0"
    assert notice.event_id == event(name)["id"]


def test_terminate_action_keeps_its_token_for_the_follow_up() -> None:
    (notice,) = parse_eventbridge(event("instance-terminate-lifecycle-action"))
    assert isinstance(notice, LifecycleTerminated) and notice.lifecycle == LifecycleAction(
        "my-asg", "my-lifecycle-hook", "87654321-4321-4321-4321-210987654321"
    )
    assert notice.detail == "my-asg"
    assert "lifecycle" not in notice.describe()  # the token completes the action: never shown


def test_a_spot_warning_carries_the_time_of_the_action_as_imds_does() -> None:
    doc = event("spot-interruption-warning")
    (notice,) = parse_eventbridge(doc)
    sent = parse_time(doc["time"])
    assert isinstance(notice, SpotInterruption) and notice.action == "terminate"
    assert notice.deadline == sent + SPOT_WARNING_S and notice.detail == "terminate"
    (hibernate,) = parse_eventbridge(
        event("spot-interruption-warning", **{"instance-action": "hibernate"})
    )
    assert hibernate.deadline == sent  # hibernation starts at once: no two-minute warning
    del doc["time"]  # every EventBridge event has one: without it, the notice has no deadline
    assert parse_eventbridge(doc) == []


def test_health_scheduled_change_names_every_affected_instance() -> None:
    doc = event("health-scheduled-change")
    doc["detail"]["affectedEntities"].append({"entityValue": "i-0fedcba9876543210"})
    notices: list[Event] = parse_eventbridge(doc)
    assert [(n.kind, n.instance_id) for n in notices] == [
        (Kind.SCHEDULED_CHANGE, "i-1234567890abcdef0"),
        (Kind.SCHEDULED_CHANGE, "i-0fedcba9876543210"),
    ]
    assert notices[0].detail == "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED"
    assert parse_eventbridge(event("health-scheduled-change", eventTypeCategory="issue")) == []
    assert parse_eventbridge(event("health-scheduled-change", service="RDS")) == []
    hostile = event("health-scheduled-change")
    hostile["detail"]["affectedEntities"] = [{"entityValue": "../nodes"}, "x"]
    assert parse_eventbridge(hostile) == []


def test_a_scheduled_change_drains_each_instance_of_the_pool() -> None:
    routers = FakeRouters({"i-1234567890abcdef0"})
    doc = event("health-scheduled-change")
    doc["detail"]["affectedEntities"].insert(0, {"entityValue": "i-0fedcba9876543210"})
    outcome, notice = InterruptionHandler(routers, clock=Clock(START)).handle(doc)
    assert outcome is Outcome.DRAINED and notice is not None
    assert notice.instance_id == "i-1234567890abcdef0" and routers.calls == 2


def test_events_that_announce_no_loss_are_dropped() -> None:
    assert parse_eventbridge(event("instance-state-change")) == []  # "pending"
    assert (
        parse_eventbridge(event("instance-terminate-lifecycle-action", Destination="WarmPool"))
        == []
    )
    assert (
        parse_eventbridge(event("spot-interruption-warning", **{"instance-id": "../nodes"})) == []
    )
    assert parse_eventbridge({"detail-type": "Scheduled Event", "detail": {}}) == []


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
    handler = InterruptionHandler(routers, clock=Clock(START))
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
    handler = InterruptionHandler(routers, clock=Clock(START))
    assert handler.handle(event("spot-interruption-warning"))[0] is Outcome.DUPLICATE


def test_rebalance_is_ignored_unless_configured_and_unknown_instances_are_not_ours() -> None:
    routers = FakeRouters(set())
    handler = InterruptionHandler(routers, clock=Clock(START))
    assert handler.handle(event("rebalance-recommendation"))[0] is Outcome.IGNORED
    assert routers.calls == 0
    handler = InterruptionHandler(routers, drain_on_rebalance=True, clock=Clock(START))
    assert handler.handle(event("rebalance-recommendation"))[0] is Outcome.NOT_REGISTERED
    assert handler.handle({"not": "an event"})[0] is Outcome.MALFORMED


def test_dedupe_memory_expires() -> None:
    clock = Clock(START)
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
    clock = Clock(START)
    decider = FallbackDecider(POLICY, clock)
    attempts = [fail(clock.now - 400), fail(clock.now - 10)]
    d = decider.decide(pool(0, attempts, spot_live=3), FallbackState())
    assert d.action is Action.RAISE
    clock.advance(600)  # the on-demand node filled the gap: no spot attempt, no failure
    d = decider.decide(pool(1, attempts, spot_live=3), d.state)
    assert (d.action, d.target_base) == (Action.HOLD, 1)
    assert "in fallback: last spot failure 610s ago" in d.reason


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=900),  # seconds until the next run
            st.lists(st.booleans(), max_size=3),  # launch attempts since (True = ok)
            st.one_of(st.none(), st.integers(min_value=0, max_value=5)),  # ready nodes
            st.integers(min_value=0, max_value=6),  # spot instances live
        ),
        max_size=30,
    ),
    base=st.integers(min_value=0, max_value=2),
    extra=st.one_of(st.none(), st.integers(min_value=0, max_value=3)),
    desired=st.integers(min_value=0, max_value=6),
)
@settings(max_examples=200, deadline=None)
def test_decisions_stay_in_bounds(
    steps: list[tuple[float, list[bool], int | None, int]],
    base: int,
    extra: int | None,
    desired: int,
) -> None:
    """Whatever happens: within [configured base, max], a raise never asks for more than
    the nodes spot does not serve (or one more for min_ready), and steps down are one node
    at least step_interval_s apart."""
    clock = Clock(START)
    policy = FallbackPolicy(
        fallback_after_s=60,
        recover_after_s=900,
        step_interval_s=600,
        min_ready=2,
        base_on_demand=base,
        max_on_demand=None if extra is None else base + extra,
    )
    decider = FallbackDecider(policy, clock)
    current, state, attempts, last_change = base, FallbackState(), [], None
    for wait, launches, ready, spot_live in steps:
        clock.advance(wait)
        attempts += [ok(clock.now) if good else fail(clock.now) for good in launches]
        obs = Observation(current, attempts, ready, desired=desired, spot_live=spot_live)
        d = decider.decide(obs, state)
        assert base <= d.target_base <= max(current, policy.cap(desired))
        if d.action is Action.RAISE:
            assert d.target_base <= max(base, current + 1, obs.not_on_spot)
        if d.action is Action.LOWER:
            assert d.target_base == current - 1
            assert last_change is None or clock.now - last_change >= policy.step_interval_s
        if d.changes:
            last_change = clock.now
        current, state = d.target_base, d.state


# -- recovery probes back off during a long shortage ------------------------------------


class ShortGroup:
    """A one-node group in a spot shortage, as the decisions see it through its activities.

    Once a minute it does what Auto Scaling does: launch on-demand up to the base;
    above the base, launch the spot replacement *before* retiring an on-demand node
    (a failed launch retires nothing); replace a missing node with spot.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.spot_short = True
        self.base = self.on_demand = self.spot = 0
        self.attempts: list[LaunchAttempt] = [fail(clock.now)]  # the lost node's replacement

    def tick(self) -> None:
        now = self.clock.now
        if self.on_demand < self.base:
            self.attempts.append(ok(now))
            self.on_demand += 1
            self.spot = max(0, min(self.spot, 1 - self.on_demand))
        elif self.on_demand > self.base or self.on_demand + self.spot < 1:
            if self.spot_short:
                self.attempts.append(fail(now))
                return
            self.attempts.append(ok(now))
            self.spot += 1
            if self.on_demand > self.base:
                self.on_demand -= 1  # retired only once its replacement is in service


def run_shortage(policy: FallbackPolicy, hours: float, then_ok_hours: float = 0) -> dict:
    """Decide once a minute through a shortage of ``hours``, then ``then_ok_hours`` of spot."""
    clock = Clock(START)
    group, decider, state = ShortGroup(clock), FallbackDecider(policy, clock), FallbackState()
    probes: list[tuple[float, float, int]] = []  # (at, quiet time before it, failed probes)
    lowest_serving_after_fallback, fell_back = 1, False
    for minute in range(int((hours + then_ok_hours) * 60)):
        group.spot_short = minute < hours * 60
        obs = Observation(group.base, list(group.attempts), None, desired=1, spot_live=group.spot)
        d = decider.decide(obs, state)
        if d.action is Action.LOWER:
            last = max(a.at for a in group.attempts if a.spot_shortage)
            probes.append((clock.now, clock.now - last, state.failed_probes))
        group.base, state = d.target_base, d.state
        clock.advance(60)
        group.tick()
        fell_back = fell_back or group.on_demand > 0
        if fell_back:
            lowest_serving_after_fallback = min(
                lowest_serving_after_fallback, group.on_demand + group.spot
            )
    return {
        "probes": probes,
        "state": state,
        "base": group.base,
        "failures": sum(1 for a in group.attempts if a.spot_shortage),
        "lowest_serving": lowest_serving_after_fallback,
    }


BACKOFF = FallbackPolicy(
    fallback_after_s=300,
    recover_after_s=900,
    step_interval_s=600,
    max_on_demand=1,
    recover_backoff_max_s=3600,
)


def test_failed_probes_double_the_wait_up_to_the_cap() -> None:
    run = run_shortage(BACKOFF, hours=12)
    waits = [quiet for _, quiet, _ in run["probes"]]
    # Each probe waits for recover_after_s x 2^(failed probes) without a failure, capped.
    # (Decisions run once a minute, so a wait can overrun by up to a minute.)
    expected = [min(900 * 2**k, 3600) for k in range(len(waits))]
    assert [w - e for w, e in zip(waits, expected, strict=True)] == [
        pytest.approx(30, abs=30) for _ in waits
    ]
    assert [failed for _, _, failed in run["probes"]] == list(range(len(waits)))
    assert expected[:4] == [900, 1800, 3600, 3600]  # doubles, then stays at the cap
    assert 10 <= len(waits) <= 14  # vs about 30 probes in 12 h without a backoff
    # Probing never costs serving capacity: the on-demand node serves until a spot
    # replacement is in service, and no replacement launches while spot is short.
    assert run["lowest_serving"] == 1 and run["base"] == 1


def test_without_backoff_the_same_shortage_probes_about_every_recover_after_s() -> None:
    flat = replace(BACKOFF, recover_backoff_max_s=BACKOFF.recover_after_s)
    run, backed_off = run_shortage(flat, hours=12), run_shortage(BACKOFF, hours=12)
    assert len(run["probes"]) >= 2 * len(backed_off["probes"])
    assert run["failures"] > backed_off["failures"]
    assert {round(quiet / 60) for _, quiet, _ in run["probes"]} <= {15, 16}


def test_the_backoff_resets_once_spot_launches_succeed_again() -> None:
    run = run_shortage(BACKOFF, hours=6, then_ok_hours=2)
    assert run["base"] == 0  # back on spot
    assert run["state"].failed_probes == 0 and run["state"].probe_at is None
    last_at, last_quiet, failed_before = run["probes"][-1]
    assert failed_before >= 3 and last_quiet < 3600 + 60  # the probe that found spot back

    # A new shortage later starts again at recover_after_s, not at the cap.
    clock = Clock(last_at + 7200)
    decider = FallbackDecider(BACKOFF, clock)
    attempts = [fail(clock.now - 400), fail(clock.now - 10)]
    d = decider.decide(Observation(0, attempts, None, desired=1), run["state"])
    assert d.action is Action.RAISE
    attempts.append(ok(clock.now + 60))
    clock.advance(60 + 900 - 10)
    d = decider.decide(Observation(1, attempts, None, desired=1), d.state)
    assert d.action is Action.LOWER and d.state.probe_at == clock.now


def test_probe_outcomes_are_read_from_launches_after_the_probe() -> None:
    state = FallbackState(changed_at=100.0, probe_at=100.0, failed_probes=2)
    assert settle_probe([fail(50), ok(60)], state, 200, 600) == state  # nothing since: pending
    reset = replace(state, probe_at=None, failed_probes=0)
    assert settle_probe([ok(160)], state, 200, 600) == reset  # spot launched
    assert settle_probe([], state, 700, 600) == reset  # a whole step without a shortage
    failed = settle_probe([ok(120), fail(160)], state, 200, 600)
    assert failed == replace(state, probe_at=None, failed_probes=3)
    assert settle_probe([ok(120), fail(160)], failed, 200, 600) == failed  # counted once


def test_held_decisions_say_when_the_next_probe_comes() -> None:
    clock = Clock(START)
    state = FallbackState(changed_at=clock.now - 600, failed_probes=2)  # re-raised after it
    d = FallbackDecider(BACKOFF, clock).decide(Observation(1, [fail(clock.now - 700)], None), state)
    assert (d.action, d.target_base) == (Action.HOLD, 1)
    assert "next probe after 3600s without one (2 failed probes)" in d.reason


def test_raising_the_configured_base_takes_effect_at_once() -> None:
    clock = Clock(START)
    policy = FallbackPolicy(base_on_demand=2, max_on_demand=3)
    state = FallbackState(changed_at=clock.now)  # even right after a step
    d = FallbackDecider(policy, clock).decide(Observation(0, [], 3), state)
    assert (d.action, d.target_base) == (Action.RAISE, 2) and "(configured)" in d.reason


def test_backoff_settings_are_validated_and_named() -> None:
    env = {"SPOTRELAY_ASG_NAME": "llm", "SPOTRELAY_RECOVER_AFTER_S": "1800"}
    with pytest.raises(SettingError, match=r"^SPOTRELAY_RECOVER_BACKOFF_MAX_S: must be >= rec"):
        from_env({**env, "SPOTRELAY_RECOVER_BACKOFF_MAX_S": "600"})
    with pytest.raises(SettingError, match=r"^SPOTRELAY_RECOVER_BACKOFF_MAX_S = 'x': not a num"):
        from_env({**env, "SPOTRELAY_RECOVER_BACKOFF_MAX_S": "x"})
    assert from_env(env).policy.recover_backoff_max_s == 14400
    assert from_env(env).policy.recover_wait(10) == 14400


def test_a_day_long_shortage_with_the_defaults() -> None:
    """The figures docs/deploy.md quotes: probes and failed launches in 24 h of shortage."""
    defaults = FallbackPolicy(max_on_demand=1)
    backed_off = run_shortage(defaults, hours=24)
    flat = run_shortage(replace(defaults, recover_backoff_max_s=defaults.recover_after_s), 24)
    assert (len(backed_off["probes"]), backed_off["failures"]) == (8, 9)
    assert (len(flat["probes"]), flat["failures"]) == (46, 47)
    assert backed_off["lowest_serving"] == flat["lowest_serving"] == 1


# -- completing a silent agent's terminate action ----------------------------------------

PENDING = PendingAction("i-1234567890abcdef0", "llm-gpu", "llm-gpu-drain", "tok", deadline=1000)


def test_a_silent_agent_s_action_completes_once_nothing_is_in_flight() -> None:
    def step(sightings: list[NodeSighting] | None, now: float = 900) -> Step:
        return judge(PENDING, sightings, now, silent_after_s=10).step

    assert step([NodeSighting(2, 3)]) is Step.WAIT  # heartbeating: the agent completes
    assert step([NodeSighting(30, 3)]) is Step.HEARTBEAT  # silent, requests still running
    assert step([NodeSighting(30, 0), NodeSighting(31, 0)]) is Step.COMPLETE
    assert step([NodeSighting(30, 0), NodeSighting(2, 0)]) is Step.WAIT  # one router hears it
    assert step([]) is Step.COMPLETE  # no router knows the node any more
    assert step(None) is Step.WAIT  # no router answered: nothing known yet
    # At the drain deadline: a silent agent's action completes whatever is in flight,
    # a live agent keeps it (the controller stops checking).
    assert step([NodeSighting(30, 3)], now=1000) is Step.COMPLETE
    assert step(None, now=1000) is Step.COMPLETE
    assert step([NodeSighting(2, 3)], now=1000) is Step.LEAVE


def test_check_messages_round_trip_and_reject_forgeries() -> None:
    assert PendingAction.from_doc(json.loads(PENDING.body())) == PENDING
    doc = json.loads(PENDING.body())
    assert PendingAction.from_doc({**doc, "instance_id": "../nodes"}) is None
    assert PendingAction.from_doc({**doc, "deadline": "soon"}) is None
    assert PendingAction.from_doc({**doc, "spotrelay": "other"}) is None
    assert PendingAction.from_doc(event("spot-interruption-warning")) is None


def test_lifecycle_settings_are_validated_and_named() -> None:
    env = {"SPOTRELAY_ASG_NAME": "llm"}
    with pytest.raises(SettingError, match=r"^SPOTRELAY_LIFECYCLE_CHECK_EVERY_S = '901'"):
        from_env({**env, "SPOTRELAY_LIFECYCLE_CHECK_EVERY_S": "901"})
    with pytest.raises(SettingError, match=r"^SPOTRELAY_MAX_ON_DEMAND = '1.5': must be a whole"):
        from_env({**env, "SPOTRELAY_MAX_ON_DEMAND": "1.5"})
    s = from_env(env)
    assert (s.lifecycle_check_every_s, s.lifecycle_deadline_s, s.agent_silent_after_s) == (
        10,
        300,
        10,
    )
    assert s.policy.max_on_demand is None and s.policy.fallback_after_s == 0
