"""The agent as a subprocess, wired by config to real processes on loopback: the IMDS
emulator, simulator engines, the router under gunicorn, moto (behind a lifecycle
front, see tests/support/aws.py) and a webhook receiver.

Timings are short so the file stays fast: IMDS polled every 0.25 s, heartbeats every
0.5 s, spot notices with a few seconds of lead, a 1 s safety margin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup, spotrelay_argv

from .support import (
    ROUTER_TOKEN,
    Service,
    register_node,
    router_nodes,
    start_sim_vllm,
)
from .support.agent_node import (
    POLL,
    control,
    get_json,
    imds_state,
    make_node,
    node_state,
    run_agent,
    spot_time,
    wait_reported,
    wait_state,
)
from .support.aws import LifecycleFront, MotoAsg, aws_env, create_asg

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------ helpers


def nodes(router: Service) -> dict[str, dict[str, Any]]:
    return router_nodes(router.control_url)


def imds_reads(imds: Service) -> int:
    """Metadata GETs the emulator has answered (each poll of each monitor is one)."""
    return int(imds_state(imds)["counts"].get("metadata_requests", 0))


def completions_seen(engine: Service) -> int:
    stats = get_json(f"{engine.url}/_control/stats")
    return int(stats["per_path"].get("/v1/completions", 0))


def complete(
    router: Service, model: str, max_tokens: int = 4, stream: bool = False, prompt: str = "hello"
) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}
    req = urllib.request.Request(
        f"{router.url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read().decode()


class Receiver:
    """A webhook endpoint collecting the JSON documents POSTed to it."""

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.docs.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.docs]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -------------------------------------------------------------------- tests


def test_spot_notice_drains_before_the_deadline(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    asg: MotoAsg = create_asg(moto_endpoint, "asg-spot")
    front = LifecycleFront(moto_endpoint)
    hook = Receiver()
    try:
        model = "m-spot"
        node = make_node(
            procs, logdir, router, model, instance_id=asg.instance_id,
            engine_args=("--itl-ms", "40"),
            lifecycle={"asg_name": asg.asg_name, "hook_name": asg.hook_name,
                       "region": "us-east-1", "endpoint_url": front.url},
            webhook={"url": hook.url},
        )  # fmt: skip
        run_agent(procs, logdir, node)
        wait_state(router, node.node_id, "ready")
        labels = nodes(router)[node.node_id]["labels"]
        assert labels == {"instance_type": "g6.xlarge", "az": "us-east-1b", "lifecycle": "spot"}
        # A second node serving the same model, registered by hand, takes the traffic.
        other = start_sim_vllm(procs, logdir, model=model, name="vllm-other")
        register_node(router.control_url, ROUTER_TOKEN, "other-node", other.url, model)

        # A long stream in flight on our node when the notice arrives.
        result: dict[str, str] = {}
        before = completions_seen(node.engine)

        def stream_on_our_node() -> None:
            for i in range(20):  # the balancer may pick the other node: retry until ours
                # (a new prompt each time: cache_aware places one prompt on one node)
                text = complete(router, model, max_tokens=50, stream=True, prompt=f"hello {i}")
                if completions_seen(node.engine) > before:
                    result["text"] = text
                    return

        t = threading.Thread(target=stream_on_our_node)
        t.start()
        wait_until(
            lambda: get_json(f"{node.engine.url}/_control/stats")["active"] >= 1,
            timeout=10,
            what="a stream in flight on our node",
        )
        front.arm(asg.instance_id)  # the ASG puts the instance in Terminating:Wait
        t0 = time.time()
        control(node.imds, "spot", {"action": "terminate", "lead_s": 8})
        deadline = spot_time(node.imds)
        excluded = wait_state(router, node.node_id, "draining", timeout=5) - t0
        assert excluded <= 2 * POLL + 0.5, f"draining after {excluded:.2f}s"

        # No new request reaches the draining node.
        seen = completions_seen(node.engine)
        for _ in range(8):
            complete(router, model)
        assert completions_seen(node.engine) == seen

        t.join(15)
        assert "data: [DONE]" in result["text"]  # the in-flight stream finished
        gone = wait_state(router, node.node_id, None, timeout=10)
        assert gone < deadline
        wait_until(front.completions, timeout=5, what="CompleteLifecycleAction")
        (done,) = front.completions()
        assert done.result == "ok" and done.at < deadline
        assert done.params["LifecycleActionResult"] == "CONTINUE"
        assert done.params["InstanceId"] == asg.instance_id
        assert node.agent is not None
        assert node.agent.metric("spotrelay_agent_drains_total", reason="spot_interruption") == 1
        # The drain ends (and is timed) only after the lifecycle action and deregistration.
        wait_until(lambda: "drain_finished" in hook.kinds(), timeout=5, what="webhook")
        wait_until(
            lambda: node.agent.metric("spotrelay_agent_drain_duration_seconds_count") == 1,
            timeout=5,
            what="the drain duration to be recorded",
        )
        assert hook.kinds()[:2] == ["event", "drain_started"]
        assert hook.docs[0]["node_id"] == node.node_id
        state = json.loads((Path(node.config["state_dir"]) / "drain.json").read_text())
        assert state["finished_at"] and state["lifecycle_result"] == "completed"
    finally:
        front.close()
        hook.close()


def test_rebalance_is_reported_unless_on_rebalance(
    procs: ProcessGroup, logdir: Path, router: Service
) -> None:
    quiet = make_node(procs, logdir, router, "m-rebal-1", instance_id="i-0rebalance00001")
    eager = make_node(
        procs, logdir, router, "m-rebal-2", instance_id="i-0rebalance00002",
        drain={"on_rebalance": True},
    )  # fmt: skip
    for node in (quiet, eager):
        run_agent(procs, logdir, node)
        wait_state(router, node.node_id, "ready")
        assert nodes(router)[node.node_id]["risk"] == "none"
        control(node.imds, "rebalance")
    wait_state(router, eager.node_id, None)  # drained and deregistered
    assert quiet.agent is not None
    wait_until(
        lambda: quiet.agent.metric("spotrelay_agent_events_total", type="rebalance") == 1,  # type: ignore[union-attr]
        timeout=5,
        what="rebalance reported",
    )
    # ... as a risk in the heartbeat, at once: routers keep long requests off the node
    wait_until(
        lambda: nodes(router)[quiet.node_id]["risk"] == "elevated",
        timeout=2,
        what="risk elevated on the router",
    )
    reads = imds_reads(quiet.imds)
    wait_until(  # several more polls that see the same recommendation
        lambda: imds_reads(quiet.imds) >= reads + 8, timeout=10, what="more IMDS polls"
    )
    assert node_state(router, quiet.node_id) == "ready"
    assert quiet.agent.metric("spotrelay_agent_drains_total", reason="rebalance") == 0


def test_target_lifecycle_terminated_and_scheduled_maintenance(
    procs: ProcessGroup, logdir: Path, router: Service, moto_endpoint: str
) -> None:
    asg = create_asg(moto_endpoint, "asg-scalein")
    front = LifecycleFront(moto_endpoint)
    try:
        scale_in = make_node(
            procs, logdir, router, "m-scalein", instance_id=asg.instance_id,
            lifecycle={"asg_name": asg.asg_name, "hook_name": asg.hook_name,
                       "region": "us-east-1", "endpoint_url": front.url},
        )  # fmt: skip
        maint = make_node(procs, logdir, router, "m-maint", instance_id="i-0maintenance001")
        for node in (scale_in, maint):
            run_agent(procs, logdir, node)
            wait_state(router, node.node_id, "ready")
        front.arm(asg.instance_id)
        control(scale_in.imds, "lifecycle", {"state": "Terminated"})
        control(maint.imds, "scheduled", {"code": "system-reboot", "not_before_s": 30})
        wait_state(router, scale_in.node_id, None)
        wait_until(lambda: front.completions(), timeout=5, what="lifecycle completed")
        assert [c.result for c in front.completions()] == ["ok"]
        # Maintenance 30 s out is within drain.maintenance_lead_s (900 s): drain now.
        wait_state(router, maint.node_id, None)
        state_file = Path(maint.config["state_dir"]) / "drain.json"
        # Deregistering is the drain's last router step; the state file records
        # the finish just after it.
        wait_until(
            lambda: json.loads(state_file.read_text()).get("finished_at"),
            timeout=10,
            what="maintenance drain recorded as finished",
        )
        st = json.loads(state_file.read_text())
        assert st["kind"] == "scheduled_maintenance" and st["finished_at"]
        assert not st["terminating"]  # no lifecycle action for maintenance
    finally:
        front.close()


def test_scheduled_maintenance_drains_at_its_lead_unless_canceled(
    procs: ProcessGroup, logdir: Path, router: Service
) -> None:
    lead_s, not_before_s = 2, 6
    drain = {"maintenance_lead_s": lead_s}
    planned, canceled = (
        make_node(procs, logdir, router, model, instance_id=iid, drain=drain)
        for model, iid in (("m-plan", "i-0maintplanned01"), ("m-cancel", "i-0maintcancel001"))
    )
    for node in (planned, canceled):
        run_agent(procs, logdir, node)
        wait_state(router, node.node_id, "ready")
    t0 = time.time()
    for node in (planned, canceled):
        control(node.imds, "scheduled", {"code": "system-reboot", "not_before_s": not_before_s})
    for node in (planned, canceled):
        seen = node.agent
        assert seen is not None
        wait_until(
            lambda a=seen: a.metric("spotrelay_agent_events_total", type="scheduled_maintenance"),
            timeout=5,
            what="the scheduled event to be seen",
        )
    control(canceled.imds, "reset")  # the event is no longer listed: canceled
    agent = canceled.agent
    assert agent is not None
    wait_until(
        lambda: agent.metric("spotrelay_agent_events_total", type="maintenance_canceled") == 1,
        timeout=5,
        what="the cancellation to be seen",
    )
    assert "planned drain dropped" in agent.proc.tail(200)
    wait_state(router, planned.node_id, None, timeout=15)
    st = json.loads((Path(planned.config["state_dir"]) / "drain.json").read_text())
    assert st["kind"] == "scheduled_maintenance"
    # NotBefore has whole seconds, so the planned drain may start up to 1 s early.
    assert st["started_at"] - t0 >= not_before_s - lead_s - 1
    # Past the canceled event's planned time (and NotBefore): still serving, never drained.
    wait_until(
        lambda: time.time() >= t0 + not_before_s + 1, timeout=not_before_s + 5, what="NotBefore"
    )
    assert node_state(router, canceled.node_id) == "ready"
    assert agent.metric("spotrelay_agent_drains_total", reason="scheduled_maintenance") == 0


def test_the_same_notice_many_times_is_one_drain(
    procs: ProcessGroup, logdir: Path, router: Service
) -> None:
    node = make_node(procs, logdir, router, "m-repeat", instance_id="i-0repeat00000001")
    run_agent(procs, logdir, node)
    wait_state(router, node.node_id, "ready")
    agent = node.agent
    assert agent is not None
    control(node.imds, "spot", {"action": "terminate", "lead_s": 30})
    # The spot notice is seen first (so it names the drain), then a second signal.
    wait_until(
        lambda: agent.metric("spotrelay_agent_events_total", type="spot_interruption") == 1,
        timeout=5,
        what="the spot notice to be seen",
    )
    control(node.imds, "lifecycle", {"state": "Terminated"})  # a second signal: merged
    wait_state(router, node.node_id, None)
    reads = imds_reads(node.imds)
    wait_until(  # many more sightings of the same notice and target state
        lambda: imds_reads(node.imds) >= reads + 12,
        timeout=10,
        what="the agent to poll IMDS several more times",
    )
    assert agent.metric("spotrelay_agent_events_total", type="spot_interruption") == 1
    assert agent.metric("spotrelay_agent_drains_total", reason="spot_interruption") == 1
    assert agent.metric("spotrelay_agent_drains_total", reason="lifecycle_terminated") == 0
    assert node_state(router, node.node_id) is None  # never re-registered
    log = agent.proc.tail(400)
    assert log.count("drain started") == 1 and log.count("drain finished") == 1


def test_imds_outage_and_revoked_tokens(procs: ProcessGroup, logdir: Path, router: Service) -> None:
    node = make_node(procs, logdir, router, "m-outage", instance_id="i-0outage00000001")
    run_agent(procs, logdir, node)
    wait_state(router, node.node_id, "ready")
    agent = node.agent
    assert agent is not None
    control(node.imds, "outage", {"mode": "error", "status": 503, "duration_s": 1.5})
    wait_until(
        lambda: agent.metric("spotrelay_agent_imds_errors_total", kind="server") > 0,
        timeout=5,
        what="IMDS errors counted",
    )
    assert node_state(router, node.node_id) == "ready"  # an IMDS outage is not an engine fault
    control(node.imds, "outage", {"mode": "stall", "duration_s": 1.5})
    wait_until(
        lambda: agent.metric("spotrelay_agent_imds_errors_total", kind="timeout") > 0,
        timeout=10,
        what="IMDS timeouts counted",
    )
    wait_until(lambda: imds_state(node.imds)["outage"] is None, timeout=5, what="stall to end")
    puts = imds_state(node.imds)["counts"]["token_puts"]
    control(node.imds, "revoke_tokens")  # expired/revoked: 401, then a fresh token
    wait_until(
        lambda: imds_state(node.imds)["counts"]["token_puts"] > puts,
        timeout=10,
        what="a fresh token after the 401",
    )
    assert agent.proc.alive()
    control(node.imds, "spot", {"action": "terminate", "lead_s": 20})
    wait_state(router, node.node_id, "draining", timeout=12)
    assert agent.metric("spotrelay_agent_imds_errors_total", kind="timeout") > 0


def test_engine_killed_then_restarted(procs: ProcessGroup, logdir: Path, router: Service) -> None:
    node = make_node(
        procs, logdir, router, "m-kill", instance_id="i-0enginekill0001",
        engine={"process_name": "vllm", "check_interval_s": 0.2},
        heartbeat={"interval_s": 1.0},
    )  # fmt: skip
    run_agent(procs, logdir, node)
    wait_state(router, node.node_id, "ready")
    agent = node.agent
    assert agent is not None
    wait_until(
        lambda: agent.metric("spotrelay_agent_engine_process_alive") == 1,
        timeout=10,
        what="process watch to find the engine",
    )
    t0 = time.time()
    node.engine.proc.kill()  # SIGKILL: a crash, not a shutdown
    # Not a drain: the requests still open there will not finish, the routers move them.
    wait_reported(router, node.node_id, "unhealthy", timeout=5)
    assert time.time() - t0 <= 2.0
    start_sim_vllm(procs, logdir, model=node.model, name="vllm-again", port=node.engine.port)
    wait_reported(router, node.node_id, "ready", timeout=15)
    assert agent.proc.alive()
    assert agent.metric("spotrelay_agent_engine_process_alive") == 1
    # /health failing with the process alive (a wedged engine) is caught by the probe.
    control(node.engine, "faults", {"unhealthy_for_s": 2.5})  # same port as the new engine
    wait_reported(router, node.node_id, "unhealthy", timeout=5)
    wait_reported(router, node.node_id, "ready", timeout=10)
    assert agent.metric("spotrelay_agent_drains_total", reason="spot_interruption") == 0


def test_agent_restarted_mid_drain_continues(
    procs: ProcessGroup, logdir: Path, router: Service
) -> None:
    node = make_node(
        procs, logdir, router, "m-restart", instance_id="i-0restart0000001",
        engine_args=("--itl-ms", "50"),
    )  # fmt: skip
    run_agent(procs, logdir, node)
    wait_state(router, node.node_id, "ready")
    t = threading.Thread(target=complete, args=(router, node.model, 80, True))
    t.start()  # ~4 s of stream keeps the drain in its wait-for-idle step
    wait_until(
        lambda: get_json(f"{node.engine.url}/_control/stats")["active"] >= 1,
        timeout=10,
        what="stream in flight",
    )
    control(node.imds, "spot", {"action": "terminate", "lead_s": 20})
    wait_state(router, node.node_id, "draining")
    state_file = Path(node.config["state_dir"]) / "drain.json"
    wait_until(
        lambda: state_file.exists() and json.loads(state_file.read_text())["announced"],
        timeout=5,
        what="announce recorded",
    )
    assert node.agent is not None
    node.agent.proc.kill()  # SIGKILL mid-drain
    states: list[str | None] = []
    run_agent(procs, logdir, node)  # same config, same state dir
    deadline = time.time() + 15
    while time.time() < deadline:
        states.append(node_state(router, node.node_id))
        if states[-1] is None and json.loads(state_file.read_text()).get("finished_at"):
            break
        time.sleep(0.05)
    t.join(10)
    assert "ready" not in states  # never re-registered as ready
    assert states[-1] is None  # the drain finished: deregistered
    assert "resuming drain after restart" in node.agent.proc.tail(200)


def test_sigterm_drains_then_exits_zero(procs: ProcessGroup, logdir: Path, router: Service) -> None:
    node = make_node(
        procs, logdir, router, "m-sigterm", instance_id="i-0sigterm0000001",
        engine_args=("--itl-ms", "30"),
    )  # fmt: skip
    run_agent(procs, logdir, node)
    wait_state(router, node.node_id, "ready")
    result: dict[str, str] = {}
    t = threading.Thread(
        target=lambda: result.update(text=complete(router, node.model, 40, stream=True))
    )
    t.start()
    wait_until(
        lambda: get_json(f"{node.engine.url}/_control/stats")["active"] >= 1,
        timeout=10,
        what="stream in flight",
    )
    assert node.agent is not None
    node.agent.proc.signal(signal.SIGTERM)
    wait_state(router, node.node_id, "draining")
    node.agent.proc.proc.wait(15)  # type: ignore[union-attr]
    assert node.agent.proc.returncode() == 0
    t.join(10)
    assert "data: [DONE]" in result["text"]
    assert node_state(router, node.node_id) is None
    # A SIGTERM drain is not an interruption: nothing persisted, a restart registers again.
    assert not (Path(node.config["state_dir"]) / "drain.json").exists()
    run_agent(procs, logdir, node)
    wait_state(router, node.node_id, "ready")


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("imds: {poll_interval_s: 0}\n", "imds.poll_interval_s"),
        ("router: {urls: [ftp://x]}\n", "router.urls[0]"),
        ("lifecycle: {asg_name: g}\n", "lifecycle.hook_name"),
        ("drain: {on_rebalanse: true}\n", "drain.on_rebalanse"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, yaml_text: str, key: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml_text)
    out = subprocess.run(
        spotrelay_argv("agent", "--config", str(path)), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], out.stderr


def test_check_and_dry_run(procs: ProcessGroup, logdir: Path, router: Service) -> None:
    node = make_node(procs, logdir, router, "m-check", instance_id="i-0check000000001")
    cfg_path = logdir / "check.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(node.config))
    env = {**os.environ, **aws_env()}

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        argv = spotrelay_argv("agent", "check", "--config", str(cfg_path), *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)

    ok = check()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("READY")
    assert "i-0check000000001" in ok.stdout and "m-check" in ok.stdout

    # A dry run watches but never registers, drains or writes state.
    run_agent(procs, logdir, node, "--dry-run")
    control(node.imds, "spot", {"action": "terminate", "lead_s": 30})
    assert node.agent is not None
    wait_until(
        lambda: node.agent.metric("spotrelay_agent_events_total", type="spot_interruption") == 1,  # type: ignore[union-attr]
        timeout=5,
        what="notice seen",
    )
    wait_until(lambda: "drain finished" in node.agent.proc.tail(100), timeout=5, what="dry drain")  # type: ignore[union-attr]
    assert node_state(router, node.node_id) is None
    assert not Path(node.config["state_dir"], "drain.json").exists()

    bad = check("--json")
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["ready"] is False
    assert any("spot_interruption" in p for p in doc["problems"])
    assert doc["engine"]["serves"] == ["m-check"]
    assert doc["routers"][0]["auth"] == "ok"
