"""The launch gate, router acknowledgements and the self-heal watchdog: pure decisions."""

from __future__ import annotations

import threading

import pytest

from spotrelay.agent.lifecycle import LifecycleError
from spotrelay.agent.readiness import Action, LaunchGate, ReadinessWatch, RouterAcks
from spotrelay.agent.selfheal import SelfHeal
from spotrelay.agent.settings import AgentConfig
from spotrelay.core.config import ConfigError, load
from spotrelay.core.protocol import NodeState

from .support.aws import ScriptedAws, assert_valid_call, hook_at


def test_gate_heartbeats_while_loading_then_continues() -> None:
    gate = LaunchGate(timeout_s=100, heartbeat_interval_s=10, started=0.0)
    assert gate.step(0.5, serving=False) is Action.HEARTBEAT  # at once: an agent is alive
    assert gate.step(5, serving=False) is Action.WAIT
    assert gate.step(10.5, serving=False) is Action.HEARTBEAT
    assert gate.step(12, serving=True) is Action.CONTINUE
    gate.finish("CONTINUE")
    assert gate.step(13, serving=True) is Action.WAIT  # completed once


def test_gate_abandons_at_the_deadline_even_if_serving_never_came() -> None:
    gate = LaunchGate(timeout_s=30, heartbeat_interval_s=10, started=100.0)
    assert gate.step(129.9, serving=False) is not Action.ABANDON
    assert gate.step(130.0, serving=False) is Action.ABANDON


def test_router_acks_need_every_reachable_router() -> None:
    acks = RouterAcks()
    assert not acks.ready_on_routers()
    acks.record("http://r1", NodeState.READY, ok=True)
    acks.record("http://r2", NodeState.READY, ok=False)  # r2 is down: does not block
    assert acks.ready_on_routers()
    acks.record("http://r2", NodeState.DRAINING, ok=True)  # r2 answers, not ready there
    assert not acks.ready_on_routers()
    acks.record("http://r2", NodeState.READY, ok=True)
    assert acks.ready_on_routers()
    acks.record("http://r1", NodeState.DRAINING, ok=True)
    assert not acks.ready_on_routers()


def test_selfheal_fires_once_after_the_window_and_only_when_armed() -> None:
    heal = SelfHeal(unhealthy_after_s=60)
    assert not heal.step(0, healthy=False, armed=False)  # launch phase: not our business
    assert not heal.step(100, healthy=False, armed=True)  # the clock starts now
    assert not heal.step(150, healthy=True, armed=True)  # recovered: reset
    assert not heal.step(160, healthy=False, armed=True)
    assert not heal.step(219, healthy=False, armed=True)
    assert heal.step(220, healthy=False, armed=True)
    assert not heal.step(400, healthy=False, armed=True)  # once


def test_selfheal_disarmed_by_a_drain_and_disabled_by_zero() -> None:
    heal = SelfHeal(unhealthy_after_s=10)
    heal.step(0, healthy=False, armed=True)
    assert not heal.step(20, healthy=False, armed=False)  # a drain stopped the engine
    assert not heal.step(25, healthy=False, armed=True)  # window restarts
    assert heal.step(35, healthy=False, armed=True)
    off = SelfHeal(unhealthy_after_s=0)
    assert not off.step(0, healthy=False, armed=True)
    assert not off.step(1e6, healthy=False, armed=True)


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("lifecycle: {launch_hook_name: l}\n", "lifecycle.asg_name"),
        ("lifecycle: {hook_name: h}\n", "lifecycle.asg_name"),
        ("lifecycle: {asg_name: g}\n", "lifecycle.hook_name"),
        ("engine: {unhealthy_after_s: -1}\n", "engine.unhealthy_after_s"),
    ],
)
def test_lifecycle_settings_errors_name_the_key(tmp_path, yaml_text: str, key: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load(AgentConfig, path, env={})
    assert key in str(err.value)


def test_launch_hook_alone_is_a_valid_configuration(tmp_path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("lifecycle: {asg_name: g, launch_hook_name: g-launch}\n")
    cfg = load(AgentConfig, path, env={})
    assert cfg.lifecycle.launch_hook_name == "g-launch" and cfg.lifecycle.hook_name is None
    assert cfg.engine.unhealthy_after_s == 300 and cfg.lifecycle.launch_timeout_s == 1800


# -- the calls, against a scripted Auto Scaling endpoint (checked against botocore's model)


def test_abandon_and_set_unhealthy_are_valid_calls(scripted_aws: ScriptedAws) -> None:
    scripted_aws.ok("CompleteLifecycleAction")
    scripted_aws.ok("SetInstanceHealth")
    hook = hook_at(scripted_aws)
    assert hook.complete("ABANDON") == "completed"
    hook.set_unhealthy()
    abandon, health = scripted_aws.forms
    for form in scripted_aws.forms:
        assert_valid_call(form)
    assert abandon["LifecycleActionResult"] == "ABANDON"
    assert health["Action"] == "SetInstanceHealth"
    assert (health["InstanceId"], health["HealthStatus"]) == ("i-0123456789abcdef0", "Unhealthy")
    assert health["ShouldRespectGracePeriod"] == "false"


def test_set_unhealthy_failure_is_a_lifecycle_error(scripted_aws: ScriptedAws) -> None:
    scripted_aws.fail(
        "AccessDenied", "not authorized to perform autoscaling:SetInstanceHealth", 403
    )
    with pytest.raises(LifecycleError, match="AccessDenied"):
        hook_at(scripted_aws).set_unhealthy()


# -- the watch's wiring of gate, acks and watchdog (fake hook, fake clock) -------------


class FakeHook:
    """Records calls; the first ``fail`` completions raise like a throttled API."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def heartbeat(self) -> bool:
        self.calls.append("heartbeat")
        return True

    def complete(self, result: str = "CONTINUE") -> str:
        self.calls.append(result)
        if self.fail:
            self.fail -= 1
            raise LifecycleError("Throttling: Rate exceeded")
        return "completed"


def make_watch(hook: FakeHook, state: dict, **kw: object) -> ReadinessWatch:
    acks = RouterAcks()
    state["acks"] = acks
    return ReadinessWatch(
        engine_ready=lambda: state["ready"],
        engine_healthy=lambda: state["ready"],
        acks=acks,
        stop=threading.Event(),
        interval_s=0.5,
        hook=hook,  # type: ignore[arg-type]
        gate=LaunchGate(timeout_s=100, heartbeat_interval_s=10, started=0.0),
        selfheal=SelfHeal(unhealthy_after_s=30),
        heal=lambda: state.__setitem__("healed", state.get("healed", 0) + 1),
        busy=lambda: state.get("busy", False),
        clock=lambda: state["now"],
        **kw,
    )


def test_watch_continues_only_with_router_acks_and_retries_a_failed_completion() -> None:
    hook = FakeHook(fail=1)
    state: dict = {"ready": True, "now": 1.0}
    watch = make_watch(hook, state)
    watch.tick()
    assert hook.calls == ["heartbeat"]  # engine ready, but no router has it yet
    state["acks"].record("http://r1", NodeState.READY, ok=True)
    state["now"] = 2.0
    watch.tick()
    assert hook.calls[-1] == "CONTINUE" and not watch.launch_done.is_set()  # throttled
    state["now"] = 5.0
    watch.tick()
    assert hook.calls.count("CONTINUE") == 1  # not before the retry delay
    state["now"] = 12.5
    watch.tick()
    assert hook.calls.count("CONTINUE") == 2 and watch.launch_done.is_set()
    state["now"] = 20.0
    watch.tick()
    assert hook.calls.count("CONTINUE") == 2  # completed once


def test_watch_arms_self_heal_after_the_launch_and_not_during_a_drain() -> None:
    hook = FakeHook()
    state: dict = {"ready": False, "now": 0.0}
    watch = make_watch(hook, state)
    for t in range(0, 60, 5):  # loading: the gate's business, not the watchdog's
        state["now"] = float(t)
        watch.tick()
    assert state.get("healed") is None
    state.update(ready=True, now=60.0)
    state["acks"].record("http://r1", NodeState.READY, ok=True)
    watch.tick()
    assert watch.launch_done.is_set()
    state.update(ready=False, busy=True)  # a spot drain stopped the engine
    for t in range(61, 200, 5):
        state["now"] = float(t)
        watch.tick()
    assert state.get("healed") is None
    state["busy"] = False  # a crash after launch, no drain under way
    for t in range(200, 240, 5):
        state["now"] = float(t)
        watch.tick()
    assert state["healed"] == 1
