"""The drain's decisions without any I/O: the machine is driven step by step on a
hand-moved clock, and what it asks for (effects, step actions) is checked as data."""

from __future__ import annotations

from typing import Any

from spotrelay.agent import drainstate as act
from spotrelay.agent.drain import DrainMachine, DrainPolicy
from spotrelay.agent.drainstate import DrainState, Effect, StepAction
from spotrelay.core.interruptions import LifecycleTerminated, Rebalance, SpotInterruption

T0 = 1_800_000_000.0
POLICY = dict(
    safety_margin_s=10.0, timeout_s=300.0, sigterm_timeout_s=20.0, ack_timeout_s=10.0,
    stop_engine=True, systemd_unit="vllm.service", engine_stop_timeout_s=120.0,
    lifecycle_heartbeat_s=30.0, idle_poll_s=0.25,
)  # fmt: skip


class Time:
    """The machine's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def machine(
    time: Time, *, has_hook: bool = True, boot_id: str | None = "boot-1", **policy: Any
) -> DrainMachine:
    return DrainMachine(
        node_id="n1",
        instance_id="i-0123456789abcdef0",
        policy=DrainPolicy(**{**POLICY, **policy}),
        has_hook=has_hook,
        boot_id=boot_id,
        clock=time,
    )


def spot(lead_s: float = 120.0) -> SpotInterruption:
    return SpotInterruption(action="terminate", time=T0 + lead_s)


def kinds(effects: list[Effect]) -> list[type]:
    return [type(e) for e in effects]


def run_steps(m: DrainMachine, outcomes: dict[type, Any] | None = None) -> list[StepAction]:
    """Run the machine's steps to the end as the executor would, idle at once."""
    actions: list[StepAction] = []
    while True:
        action, _ = m.next_action()
        if action is None:
            return actions
        actions.append(action)
        if isinstance(action, act.WaitIdle):
            assert not m.idle_poll(True).done and m.idle_poll(True).done
        m.step_done(action, (outcomes or {}).get(type(action)))


def test_a_new_drain_wakes_the_links_before_writing_and_then_starts_the_worker() -> None:
    m = machine(Time())
    started, effects = m.request(m.for_event(spot()))
    assert started and m.active and not m.silenced
    assert kinds(effects) == [
        act.WakeLinks,
        act.Persist,
        act.Measure,
        act.Measure,
        act.Notify,
        act.StartWorker,
    ]
    assert effects[2] == act.Measure("drains", label="spot_interruption") and effects[
        3
    ] == act.Measure("draining", 1.0)
    notify = effects[4]
    assert isinstance(notify, act.Notify) and notify.kind == "drain_started"
    assert notify.fields["drain"]["deadline"] == T0 + 120


def test_steps_run_in_order_deregister_then_lifecycle_then_engine() -> None:
    time = Time()
    m = machine(time)
    m.request(m.for_event(spot()))
    action, before = m.next_action()
    assert isinstance(action, act.Announce) and before == [act.WakeLinks()]
    m.step_done(action, frozenset({"http://r1"}))
    assert m.acked == {"http://r1"}
    action, _ = m.next_action()
    assert isinstance(action, act.WaitIdle)
    m.step_done(action)
    action, before = m.next_action()
    # No heartbeat may land after the DELETE: silenced before it is sent.
    assert isinstance(action, act.Deregister) and before == [act.Quiesce()] and m.silenced
    assert kinds(m.step_done(action)) == [act.WakeLinks, act.Persist]
    action, _ = m.next_action()
    assert isinstance(action, act.CompleteLifecycle)
    done = m.step_done(action, "completed")
    assert kinds(done) == [act.Measure, act.Persist]
    assert done[0] == act.Measure("lifecycle", label="completed")
    action, _ = m.next_action()
    assert action == act.StopEngine("vllm.service", 120.0)
    m.step_done(action)
    time.now += 7
    action, after = m.next_action()
    assert action is None and m.finished
    assert kinds(after) == [act.Persist, act.Measure, act.Measure, act.Notify]
    assert after[1] == act.Measure("duration", 7.0) and after[2] == act.Measure("draining", 0.0)
    state = m.state
    assert state is not None and state.lifecycle_result == "completed" and state.engine_stopped


def test_no_hook_no_lifecycle_step_and_a_rebalance_does_not_terminate() -> None:
    m = machine(Time(), has_hook=False, stop_engine=False)
    m.request(m.for_event(spot()))
    assert [type(a) for a in run_steps(m)] == [act.Announce, act.WaitIdle, act.Deregister]
    m2 = machine(Time(), stop_engine=False)
    m2.request(m2.for_event(Rebalance(notice_time=T0)))
    assert [type(a) for a in run_steps(m2)] == [act.Announce, act.WaitIdle, act.Deregister]


def test_deadlines_of_each_step() -> None:
    time = Time()
    m = machine(time)
    req = m.for_event(spot(120))
    assert (req.drain_until, req.deadline) == (T0 + 110, T0 + 120)  # safety margin
    no_time = m.for_event(LifecycleTerminated())
    assert (no_time.drain_until, no_time.deadline) == (T0 + 300, T0 + 310)
    m.request(m.for_event(spot(5)))  # a notice with 5 s left
    action, _ = m.next_action()
    assert action == act.Announce(until=T0 + 5)  # the deadline, not now + ack_timeout_s
    m.step_done(action, frozenset())
    m.next_action()
    m.step_done(act.WaitIdle())
    action, _ = m.next_action()
    assert action == act.Deregister(until=T0 + 5)
    m.step_done(action)
    time.now = T0 + 30  # past the deadline: each call still gets a moment
    action, _ = m.next_action()
    assert action == act.CompleteLifecycle(until=T0 + 35)


def test_the_idle_wait_needs_two_quiet_polls_heartbeats_the_hook_and_stops_at_drain_until() -> None:
    time = Time()
    m = machine(time)
    m.request(m.for_event(spot(120)))
    m.step_done(m.next_action()[0], frozenset())
    assert isinstance(m.next_action()[0], act.WaitIdle)
    first = m.idle_poll(True)
    assert not first.done and not first.heartbeat and first.sleep_s == 0.25
    assert not m.idle_poll(False).done  # busy again: the count starts over
    assert not m.idle_poll(True).done
    time.now += 30  # lifecycle.heartbeat_interval_s later, still busy
    assert m.idle_poll(False).heartbeat
    assert not m.idle_poll(False).heartbeat  # once per interval
    time.now = T0 + 110 - 0.1
    assert not m.idle_over() and m.idle_poll(False).sleep_s < 0.11
    time.now = T0 + 110
    assert m.idle_over()


def test_signals_merge_into_one_drain_and_an_earlier_deadline_tightens_it() -> None:
    m = machine(Time())
    rebalance = Rebalance(notice_time=T0)
    assert m.request(m.for_event(rebalance))[0]
    assert m.request(m.for_event(rebalance)) == (False, [])  # the same notice again
    started, effects = m.request(m.for_event(spot(60)))
    assert not started
    assert kinds(effects) == [
        act.Persist,
        act.WakeWorker,
    ]  # no second worker: the running one re-reads
    state = m.state
    assert state is not None
    assert state.reasons == [rebalance.key, spot(60).key]
    assert (state.drain_until, state.deadline, state.terminating) == (T0 + 50, T0 + 60, True)
    later = spot(600)
    m.request(m.for_event(later))
    assert state.deadline == T0 + 60  # a later deadline never loosens the drain
    assert [e.get("key") for e in state.events] == [rebalance.key, spot(60).key, later.key]


def test_a_terminating_signal_after_a_finished_drain_runs_only_the_lifecycle_step() -> None:
    m = machine(Time(), stop_engine=False)
    m.request(m.for_event(Rebalance(notice_time=T0)))
    assert [type(a) for a in run_steps(m)] == [act.Announce, act.WaitIdle, act.Deregister]
    assert m.finished
    started, effects = m.request(m.for_event(LifecycleTerminated()))
    assert not started and kinds(effects) == [act.Persist, act.StartWorker, act.WakeWorker]
    assert not m.finished
    assert run_steps(m, {act.CompleteLifecycle: "completed"}) == [
        act.CompleteLifecycle(until=T0 + 310)
    ]


def test_restart_mid_drain_resumes_from_the_persisted_state() -> None:
    time = Time()
    m = machine(time)
    m.request(m.for_event(spot()))
    action, _ = m.next_action()
    written = [e for e in m.step_done(action, frozenset()) if isinstance(e, act.Persist)]
    doc = written[-1].state.to_json()  # what reached the disk after the announce
    time.now += 3
    again = machine(time)
    effects = again.restore(DrainState.from_json(doc))
    assert effects == [act.StartWorker(resumed=True), act.Measure("draining", 1.0)]
    assert again.active and not again.silenced
    steps = run_steps(again, {act.CompleteLifecycle: "completed"})
    assert [type(a) for a in steps] == [
        act.WaitIdle,
        act.Deregister,
        act.CompleteLifecycle,
        act.StopEngine,
    ]
    # Restarted again after the last step: out of service, nothing left to do.
    final = again.state
    assert final is not None
    third = machine(time)
    assert third.restore(final.snapshot()) == [act.Measure("draining", 0.0)]
    assert third.silenced and third.next_action()[0] is None


def test_a_state_file_of_another_instance_or_boot_is_cleared() -> None:
    m = machine(Time())
    m.request(m.for_event(spot()))
    assert m.state is not None
    other_boot = DrainState.from_json({**m.state.to_json(), "boot_id": "boot-0"})
    assert machine(Time()).restore(other_boot) == [act.ClearState()]
    other_instance = DrainState.from_json({**m.state.to_json(), "instance_id": "i-other"})
    fresh = machine(Time())
    assert fresh.restore(other_instance) == [act.ClearState()] and not fresh.active
    assert machine(Time()).restore(None) == []


def test_sigterm_drain_is_short_and_never_written() -> None:
    m = machine(Time())
    req = m.for_shutdown()
    assert (req.drain_until, req.deadline, req.persist) == (T0 + 20, T0 + 25, False)
    started, effects = m.request(req)
    assert started and act.Persist not in kinds(effects)
    steps = run_steps(m)
    assert [type(a) for a in steps] == [
        act.Announce,
        act.WaitIdle,
        act.Deregister,
    ]  # no engine stop
    # A spot notice during the SIGTERM drain makes it worth keeping.
    m2 = machine(Time())
    m2.request(m2.for_shutdown())
    _, effects = m2.request(m2.for_event(spot()))
    assert act.Persist in kinds(effects)


def test_every_write_is_numbered_so_a_stale_snapshot_is_never_written_last() -> None:
    m = machine(Time())
    _, effects = m.request(m.for_event(spot()))
    action, _ = m.next_action()
    effects += m.step_done(action, frozenset())
    effects += m.request(m.for_event(LifecycleTerminated()))[1]
    seqs = [e.seq for e in effects if isinstance(e, act.Persist)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 3
