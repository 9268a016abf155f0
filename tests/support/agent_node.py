"""One simulated GPU node under a real agent: IMDS emulator, simulator engine, agent config.

The tests that run ``spotrelay agent`` as a subprocess build nodes here and share
one router per module (conftest.py's ``router`` fixture); each test uses its own
model name, so tests never route to each other's nodes.
Timings are short: IMDS polled every 0.25 s, heartbeats every 0.5 s, a 1 s safety margin.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotrelay.core.interruptions import parse_time
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .aws import aws_env
from .services import (
    ROUTER_TOKEN,
    AgentProcess,
    Service,
    post_json,
    router_nodes,
    start_agent,
    start_imds,
    start_sim_vllm,
)

POLL = 0.25


def control(svc: Service, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """``POST /_control/<action>`` on a simulator or IMDS emulator."""
    return post_json(f"{svc.url}/_control/{action}", body)


def get_json(url: str, token: str | None = None) -> Any:
    """``GET url`` (with a bearer ``token``), decoded."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
        return json.loads(resp.read())


def node_state(router: Service, node_id: str) -> str | None:
    node = router_nodes(router.control_url).get(node_id)
    return None if node is None else node["state"]


def imds_state(imds: Service) -> dict[str, Any]:
    return get_json(f"{imds.url}/_control/state")


@dataclass
class Node:
    """One simulated GPU node: IMDS emulator, engine, agent (and its config)."""

    imds: Service
    engine: Service
    model: str
    node_id: str
    config: dict[str, Any]
    agent: AgentProcess | None = None


def make_node(
    procs: ProcessGroup,
    logdir: Path,
    router: Service,
    model: str,
    *,
    instance_id: str,
    engine_args: tuple[str, ...] = (),
    **sections: dict[str, Any],
) -> Node:
    """Start the IMDS emulator and engine of a node; its agent config (``sections`` merged in)."""
    imds = start_imds(procs, logdir, "--instance-id", instance_id, "--az", "us-east-1b")
    engine = start_sim_vllm(procs, logdir, *engine_args, model=model)
    config: dict[str, Any] = {
        "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN},
        "engine": {"url": engine.url, "model": model, "systemd_unit": None},
        "imds": {"url": imds.url, "poll_interval_s": POLL},
        "heartbeat": {"interval_s": 0.5},
        "drain": {"safety_margin_s": 1, "ack_timeout_s": 2, "sigterm_timeout_s": 5},
        "state_dir": str(logdir / f"state-{instance_id}"),
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return Node(imds, engine, model, instance_id, config)


def run_agent(procs: ProcessGroup, logdir: Path, node: Node, *extra: str, **kw: Any) -> Node:
    """Start ``spotrelay agent`` for ``node`` with the test AWS credentials."""
    node.agent = start_agent(
        procs, logdir, node.config, *extra, name=f"agent-{node.node_id}", env=aws_env(), **kw
    )
    return node


def wait_state(router: Service, node_id: str, state: str | None, timeout: float = 10) -> float:
    """Poll ``GET /nodes`` until the node has ``state`` (None: absent); returns when."""
    wait_until(
        lambda: node_state(router, node_id) == state,
        timeout=timeout,
        interval=0.01,
        what=f"{node_id} to be {state}",
    )
    return time.time()


def wait_reported(router: Service, node_id: str, state: str, timeout: float = 10) -> None:
    """Poll ``GET /nodes`` until the node's own report (``reported_state``) is ``state``."""
    wait_until(
        lambda: (
            (router_nodes(router.control_url).get(node_id) or {}).get("reported_state") == state
        ),
        timeout=timeout,
        interval=0.01,
        what=f"{node_id} to report {state}",
    )


def spot_time(imds: Service) -> float:
    """The termination time of the emulator's spot notice."""
    return parse_time(get_json(f"{imds.url}/_control/state")["events"]["spot"]["time"])
