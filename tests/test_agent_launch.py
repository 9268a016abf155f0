"""The launch readiness gate and self-healing, end to end.

The agent runs as a subprocess against the IMDS emulator, a simulator engine,
the router under gunicorn and moto (an ASG with a launch hook whose default
result is ABANDON) behind the tests' lifecycle front, which answers the two
lifecycle actions moto lacks and forwards the rest (``SetInstanceHealth``,
``DescribeLifecycleHooks``) to moto.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .support import Service, router_nodes
from .support.agent_node import Node, control, make_node, run_agent, wait_state
from .support.aws import LifecycleFront, MotoAsg, autoscaling_client, aws_env, create_asg

pytestmark = pytest.mark.timeout(120)


class RecordingFront(LifecycleFront):
    """The lifecycle front, also noting what the router said at each CompleteLifecycleAction."""

    router_url: str = ""
    node_seen: list[dict | None]

    def handle(self, action: str, form: dict[str, str]) -> tuple[int, str]:
        if action == "CompleteLifecycleAction":
            node = router_nodes(self.router_url).get(form.get("InstanceId", ""))
            self.node_seen.append(node)
        return super().handle(action, form)


def launch_asg(moto: str, name: str) -> MotoAsg:
    """An ASG of one instance with a launch hook (default ABANDON) and no terminate hook."""
    asg = create_asg(moto, name, hook_name=f"{name}-drain")
    autoscaling_client(moto).put_lifecycle_hook(
        LifecycleHookName=f"{name}-launch",
        AutoScalingGroupName=name,
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
        HeartbeatTimeout=600,
        DefaultResult="ABANDON",
    )
    return asg


def front_for(moto: str, router: Service, instance_id: str) -> RecordingFront:
    front = RecordingFront(moto)
    front.router_url = router.control_url
    front.node_seen = []
    front.arm(instance_id)  # the instance waits in Pending:Wait
    return front


def lifecycle_cfg(asg: MotoAsg, front: LifecycleFront, **extra: object) -> dict:
    return {
        "asg_name": asg.asg_name,
        "launch_hook_name": f"{asg.asg_name}-launch",
        "endpoint_url": front.url,
        "region": "us-east-1",
        "heartbeat_interval_s": 1,
        **extra,
    }


@contextlib.contextmanager
def gated_node(
    procs: ProcessGroup,
    logdir: Path,
    router: Service,
    moto: str,
    name: str,
    *,
    fault_unhealthy_s: float = 0,
    **sections: dict,
) -> Iterator[tuple[MotoAsg, RecordingFront, Node]]:
    """An instance of a launch-hooked ASG in Pending:Wait, its engine (``fault_unhealthy_s``:
    still loading that long) and its running agent; the front is closed afterwards."""
    asg = launch_asg(moto, f"asg-{name}")
    front = front_for(moto, router, asg.instance_id)
    try:
        lifecycle = lifecycle_cfg(asg, front, **sections.pop("lifecycle", {}))
        node = make_node(
            procs, logdir, router, f"m-{name}", instance_id=asg.instance_id,
            lifecycle=lifecycle, **sections,
        )  # fmt: skip
        if fault_unhealthy_s:
            control(node.engine, "faults", {"unhealthy_for_s": fault_unhealthy_s})
        run_agent(procs, logdir, node)
        yield asg, front, node
    finally:
        front.close()


def health_of(moto: str, instance_id: str) -> str:
    reply = autoscaling_client(moto).describe_auto_scaling_instances(InstanceIds=[instance_id])
    return reply["AutoScalingInstances"][0]["HealthStatus"].upper()  # AWS: HEALTHY, moto: Healthy


def test_launch_hook_continues_only_once_registered_and_ready(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    with gated_node(
        procs,
        logdir,
        router,
        moto_endpoint,
        "launch",
        fault_unhealthy_s=5,  # the model loads
    ) as (asg, front, node):
        wait_until(lambda: front.completions(), timeout=30, what="launch hook completed")
        done = front.completions()[0]
        assert done.params["LifecycleActionResult"] == "CONTINUE"
        assert done.params["LifecycleHookName"] == "asg-launch-launch"
        assert done.result == "ok"
        # At the moment of CONTINUE the router already routed to the node.
        seen = front.node_seen[0]
        assert seen is not None and seen["state"] == "ready"
        # While the model loaded, the agent kept the hook alive.
        beats = [c for c in front.calls if c.action == "RecordLifecycleActionHeartbeat"]
        assert beats and all(b.at < done.at for b in beats)
        assert all(b.params["LifecycleHookName"] == "asg-launch-launch" for b in beats)
        assert len(front.completions()) == 1  # once, not on every tick
        agent = node.agent
        assert agent is not None
        assert agent.metric(
            "spotrelay_agent_launch_hook_total", action="CONTINUE", outcome="completed"
        ) == 1  # fmt: skip
        healthy_at = agent.metric("spotrelay_agent_startup_seconds", milestone="engine_healthy")
        registered_at = agent.metric("spotrelay_agent_startup_seconds", milestone="registered")
        assert 0 < healthy_at <= registered_at
        assert registered_at - healthy_at < 5  # one heartbeat (0.5 s) plus the probe period
        assert health_of(moto_endpoint, asg.instance_id) == "HEALTHY"


def test_engine_that_never_gets_healthy_is_abandoned(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    t0 = time.time()
    with gated_node(
        procs, logdir, router, moto_endpoint, "abandon", fault_unhealthy_s=600,  # never loads
        lifecycle={"launch_timeout_s": 4},
    ) as (_, front, node):  # fmt: skip
        wait_until(lambda: front.completions(), timeout=30, what="launch hook completed")
        done = front.completions()[0]
        assert done.params["LifecycleActionResult"] == "ABANDON"
        assert done.at - t0 >= 4
        assert front.node_seen == [None]  # never registered
        beats = [c for c in front.calls if c.action == "RecordLifecycleActionHeartbeat"]
        assert len(beats) >= 2
        agent = node.agent
        assert agent is not None
        assert agent.metric(
            "spotrelay_agent_launch_hook_total", action="ABANDON", outcome="completed"
        ) == 1  # fmt: skip
        assert agent.metric("spotrelay_agent_launch_hook_total", action="CONTINUE") == 0
        assert "abandoning the launch" in agent.proc.tail(200)


def test_engine_that_dies_after_launch_gets_the_instance_replaced(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    with gated_node(
        procs, logdir, router, moto_endpoint, "heal",
        engine={"unhealthy_after_s": 2, "process_name": None}, drain={"timeout_s": 3},
    ) as (asg, front, node):  # fmt: skip
        wait_until(lambda: front.completions(), timeout=30, what="launch hook completed")
        wait_state(router, node.node_id, "ready")
        agent = node.agent
        assert agent is not None
        assert health_of(moto_endpoint, asg.instance_id) == "HEALTHY"
        node.engine.proc.kill()  # vLLM dies after the launch phase
        t0 = time.time()
        wait_until(
            lambda: health_of(moto_endpoint, asg.instance_id) == "UNHEALTHY",
            timeout=30,
            what="SetInstanceHealth(Unhealthy) in moto",
        )
        assert time.time() - t0 >= 2  # not before engine.unhealthy_after_s
        assert (
            router_nodes(router.control_url).get(node.node_id) is None
        )  # drained and deregistered
        assert agent.metric("spotrelay_agent_self_heal_total", result="triggered") == 1
        assert agent.metric("spotrelay_agent_self_heal_total", result="set_unhealthy") == 1
        assert agent.metric("spotrelay_agent_drains_total", reason="engine_unhealthy") == 1
        assert "marking instance" in agent.proc.tail(300)


def test_engine_down_during_launch_does_not_self_heal(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    """The launch phase belongs to the launch hook: a slow load is not a sick node."""
    with gated_node(
        procs, logdir, router, moto_endpoint, "slow", fault_unhealthy_s=5,
        engine={"unhealthy_after_s": 1},
    ) as (asg, front, node):  # fmt: skip
        wait_until(lambda: front.completions(), timeout=30, what="launch hook completed")
        assert front.completions()[0].params["LifecycleActionResult"] == "CONTINUE"
        wait_state(router, node.node_id, "ready")
        assert node.agent is not None
        assert node.agent.metric("spotrelay_agent_self_heal_total", result="triggered") == 0
        assert health_of(moto_endpoint, asg.instance_id) == "HEALTHY"


def test_check_describes_both_hooks(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    """``spotrelay agent check`` finds the launch hook and the termination hook in the group."""
    import json
    import os
    import subprocess

    import yaml

    from spotrelay.sim.processes import spotrelay_argv

    with gated_node(
        procs, logdir, router, moto_endpoint, "check", lifecycle={"hook_name": "asg-check-drain"}
    ) as (_, front, node):
        wait_until(lambda: front.completions(), timeout=30, what="launch hook completed")
        path = logdir / "check.yaml"
        path.write_text(yaml.safe_dump(node.config))
        argv = spotrelay_argv("agent", "check", "--config", str(path), "--json")
        env = {**os.environ, **aws_env()}
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        doc = json.loads(out.stdout)
        hooks = doc["lifecycle"]
        assert hooks["launch_hook"]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
        assert hooks["launch_hook"]["DefaultResult"] == "ABANDON"
        assert hooks["hook"]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        assert out.returncode == 0, out.stdout + out.stderr
