"""The agent notices a hung engine and tells the routers at once, then that it is back.

Two signs (agent/hang.py): the health check not answering within
``engine.timeout_s`` (here: the simulator SIGSTOPped, its sockets open and silent),
and requests running while ``vllm:generation_tokens_total`` stands still for
``engine.stall_after_s`` (the simulator's stall fault: HTTP answers, no token comes).
Each is checked on real processes against the router's ``GET /nodes``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from spotrelay.agent.hang import TokenStall
from spotrelay.core.protocol import NodeState
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .support import (
    ROUTER_TOKEN,
    post_json,
    router_nodes,
    start_agent,
    start_imds,
    start_router,
    start_sim_vllm,
)
from .support.agent_node import get_json

pytestmark = pytest.mark.timeout(90)


# ------------------------------------------------------------ the decision, I/O-free


def test_tokens_standing_still_with_work_running_is_a_stall() -> None:
    stall = TokenStall(after_s=10)
    assert not stall.observe(0.0, running=2, generated=100)
    assert not stall.observe(9.9, running=2, generated=100)
    assert stall.observe(10.0, running=2, generated=100)
    assert stall.stalled_for(12.0) == 12.0
    assert not stall.observe(11.0, running=2, generated=101)  # one token: alive again
    assert not stall.observe(20.9, running=2, generated=101)
    assert stall.observe(21.0, running=2, generated=101)


def test_a_stalled_engine_stays_suspect_when_its_work_leaves() -> None:
    """The routers take requests off an unhealthy node: that is no sign of recovery."""
    stall = TokenStall(after_s=5)
    stall.observe(0.0, running=2, generated=100)
    assert stall.observe(5.0, running=2, generated=100)
    assert not stall.needs_canary(running=2)
    assert stall.observe(6.0, running=0, generated=100)  # work gone, still no token
    assert stall.needs_canary(running=0)
    assert stall.observe(60.0, running=0, generated=100)
    stall.recovered()  # our one-token request was answered
    assert not stall.observe(61.0, running=0, generated=100)
    # Or a token seen on the counter clears it just the same.
    stall.observe(62.0, running=1, generated=100)
    assert stall.observe(67.0, running=1, generated=100)
    assert not stall.observe(68.0, running=0, generated=101)
    assert not stall.needs_canary(running=0)


def test_no_work_or_no_counter_is_never_a_stall() -> None:
    stall = TokenStall(after_s=5)
    assert not stall.observe(0.0, running=0, generated=100)
    assert not stall.observe(100.0, running=0, generated=100)  # idle: nothing to generate
    assert not stall.observe(101.0, running=1, generated=100)  # work appeared: clock starts
    assert not stall.observe(105.5, running=1, generated=None)  # counter not exported
    assert not stall.observe(200.0, running=1, generated=None)
    assert not stall.observe(201.0, running=None, generated=5)  # /metrics unreadable
    off = TokenStall(after_s=0)
    assert not off.observe(0.0, 1, 1) and not off.observe(1e6, 1, 1)


def test_a_counter_going_backwards_is_a_restarted_engine_not_a_stall() -> None:
    stall = TokenStall(after_s=5)
    stall.observe(0.0, running=1, generated=500)
    assert not stall.observe(4.0, running=1, generated=3)
    assert not stall.observe(8.0, running=1, generated=3)
    assert stall.observe(9.0, running=1, generated=3)
    stall.reset()
    assert not stall.observe(9.5, running=1, generated=3) and not stall.suspect


def test_a_stalled_engine_is_not_ready_so_self_healing_counts_it() -> None:
    """Self-healing (agent/selfheal.py) is fed ``ready``: a hung engine starts its clock."""
    from spotrelay.agent.engine import EngineStatus, read_metrics
    from spotrelay.agent.selfheal import SelfHeal

    load, generated = read_metrics(
        'vllm:num_requests_running{model_name="m"} 3\n'
        'vllm:generation_tokens_total{model_name="m"} 1234\n'
    )
    assert (load.running, generated) == (3, 1234)
    assert read_metrics('vllm:num_requests_running{model_name="m"} 0\n')[1] is None
    status = EngineStatus(healthy=True, models=["m"], load=load, generated=generated)
    assert status.ready("m")
    status.stalled = True
    assert not status.ready("m")
    heal = SelfHeal(unhealthy_after_s=60)
    assert not heal.step(0.0, healthy=status.ready("m"), armed=True)
    assert heal.step(60.0, healthy=status.ready("m"), armed=True)


def test_unhealthy_is_the_last_node_state() -> None:
    assert list(NodeState)[-1] is NodeState.UNHEALTHY
    assert NodeState.UNHEALTHY.value == "unhealthy"


# ----------------------------------------------------------------- real processes


def reported(router_url: str, node_id: str) -> str | None:
    node = router_nodes(router_url).get(node_id)
    return None if node is None else node["reported_state"]


def node_under_agent(
    procs: ProcessGroup, logdir: Path, model: str, engine: dict[str, Any], *engine_args: str
) -> tuple[Any, Any, Any, str]:
    """A router, a simulator engine and an agent registering it: (router, engine, agent, id)."""
    router = start_router(procs, logdir)
    imds = start_imds(procs, logdir, "--instance-id", "i-0ha0000000000001")
    sim = start_sim_vllm(procs, logdir, *engine_args, model=model)
    node_id = f"n-{model}"
    config = {
        "node": {"id": node_id, "advertise_url": sim.url},
        "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN,
                   "node_token_file": None},
        "engine": {"url": sim.url, "model": model, "systemd_unit": None, "process_name": None,
                   **engine},
        "imds": {"url": imds.url, "poll_interval_s": 0.5},
        "heartbeat": {"interval_s": 0.5},
        "state_dir": str(logdir / "state"),
    }  # fmt: skip
    agent = start_agent(procs, logdir, config)
    wait_until(lambda: reported(router.control_url, node_id) == "ready", timeout=20, what="ready")
    return router, sim, agent, node_id


def test_frozen_engine_is_reported_unhealthy_within_seconds_then_ready(
    procs: ProcessGroup, logdir: Path
) -> None:
    router, sim, agent, node_id = node_under_agent(procs, logdir, "hang-stop", {"timeout_s": 1})
    heartbeats = agent.metric("spotrelay_agent_heartbeats_total")
    t0 = time.monotonic()
    sim.proc.signal(signal.SIGSTOP)  # sockets open, nothing answers
    try:
        # probe every heartbeat (0.5 s) + the 1 s health timeout, then sent at once
        wait_until(
            lambda: reported(router.control_url, node_id) == "unhealthy",
            timeout=4,
            interval=0.05,
            what="the router to see the node unhealthy",
        )
        frozen_for = time.monotonic() - t0
        assert agent.metric("spotrelay_agent_engine_unhealthy_total", reason="no_answer") == 1
        assert agent.metric("spotrelay_agent_heartbeats_total") > heartbeats
    finally:
        sim.proc.signal(signal.SIGCONT)
    wait_until(
        lambda: reported(router.control_url, node_id) == "ready", timeout=5, what="ready again"
    )
    assert agent.metric("spotrelay_agent_engine_ready") == 1
    assert "engine unhealthy (GET /health" in agent.proc.tail(400)
    assert frozen_for < 4


def test_engine_generating_nothing_with_work_running_is_reported_unhealthy(
    procs: ProcessGroup, logdir: Path
) -> None:
    router, sim, agent, node_id = node_under_agent(
        procs, logdir, "hang-stall", {"stall_after_s": 1.5, "timeout_s": 1},
        "--ttft-ms", "5", "--itl-ms", "20",
    )  # fmt: skip
    body = {"model": "hang-stall", "prompt": "stall", "max_tokens": 500, "stream": True}
    stream = requests.post(sim.url + "/v1/completions", json=body, stream=True, timeout=10)
    try:
        wait_until(
            lambda: get_json(sim.url + "/_control/stats")["engine"]["running"] == 1,
            timeout=5,
            what="the stream under way",
        )
        post_json(sim.url + "/_control/faults", {"stall": True})  # the GPU hangs
        t0 = time.monotonic()
        wait_until(
            lambda: reported(router.control_url, node_id) == "unhealthy",
            timeout=6,
            interval=0.05,
            what="the router to see the hung engine unhealthy",
        )
        assert time.monotonic() - t0 >= 1.4  # not before stall_after_s
        assert agent.metric("spotrelay_agent_engine_unhealthy_total", reason="stalled") == 1
        assert "engine hung: 1 requests running and no token generated" in agent.proc.tail(400)

        # Its client leaves (as a router moving the request would): nothing runs there
        # any more, which proves nothing. One-token canaries go unanswered: still hung.
        stream.close()
        wait_until(
            lambda: get_json(sim.url + "/_control/stats")["engine"]["running"] == 0,
            timeout=5,
            what="the stream gone",
        )
        canaries = get_json(sim.url + "/_control/stats")["per_path"]["/v1/completions"]
        wait_until(
            lambda: (
                get_json(sim.url + "/_control/stats")["per_path"]["/v1/completions"] >= canaries + 2
            ),
            timeout=10,
            what="two canary requests",
        )
        assert reported(router.control_url, node_id) == "unhealthy"
    finally:
        stream.close()
        post_json(sim.url + "/_control/faults", {"stall": False})
    wait_until(
        lambda: reported(router.control_url, node_id) == "ready", timeout=6, what="ready again"
    )
    assert "the stalled engine answered a one-token request" in agent.proc.tail(400)
    assert agent.metric("spotrelay_agent_engine_unhealthy_total") == 1  # no flapping
