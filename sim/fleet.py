"""A local spot fleet: routers and N nodes, each node an engine + IMDS emulator + agent.

Everything is a real process on loopback, started the way an operator would
start it (``spotrelay router``, ``spotrelay sim vllm``, ``spotrelay sim imds``,
``spotrelay agent``), so the demo exercises the same code paths as
production. The fleet plays the part of EC2 and the Auto Scaling group: it
sends spot notices through the emulator, terminates nodes when their notice
time arrives, and launches replacements. With several routers (which share a
registry in Redis) each agent heartbeats one of them, as it would a load
balancer's single address, and a router can be killed and restarted.
"""

from __future__ import annotations

import json
import secrets
import shlex
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spotrelay.core.control_api import HEALTHZ
from spotrelay.core.control_client import ControlClient, ControlError

from .loopback import free_port, http_ok
from .processes import ManagedProcess, ProcessGroup, spotrelay_argv

HOST = "127.0.0.1"


@dataclass
class FleetOptions:
    """How the local fleet is shaped; the demo's flags map onto these."""

    model: str = "sim-model"
    ttft_ms: int = 40
    itl_ms: int = 15
    max_num_seqs: int = 64
    poll_interval_s: float = 0.5
    engine_cmd: str | None = None
    engine_ready_timeout_s: float = 60.0
    router_overrides: dict[str, Any] = field(default_factory=dict)
    routers: int = 1
    agent_metrics: bool = False  # agents serve /metrics (demo --prometheus scrapes them)


@dataclass
class Node:
    """One simulated GPU instance and the three processes that make it up."""

    name: str
    engine_url: str
    imds_url: str
    engine: ManagedProcess
    imds: ManagedProcess
    agent: ManagedProcess
    started_at: float
    killed_at: float | None = None
    instance_id: str = ""
    lifecycle: str = "spot"  # instance-life-cycle: spot or on-demand
    metrics_port: int = 0  # the agent's /metrics (0: off)

    @property
    def processes(self) -> list[ManagedProcess]:
        return [self.agent, self.engine, self.imds]

    def alive(self) -> bool:
        return self.killed_at is None


def _post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


class LocalFleet:
    """Starts, preempts, kills and replaces local nodes behind one router."""

    def __init__(self, workdir: Path, options: FleetOptions) -> None:
        self.workdir = workdir
        self.options = options
        self.procs = ProcessGroup()
        self.token = secrets.token_urlsafe(24)
        self.router_url = ""  # the first router's
        self.router: ManagedProcess | None = None
        self.routers: dict[str, tuple[str, ManagedProcess]] = {}  # name -> (url, process)
        # name -> the control listener's port (/nodes, /instances, /metrics), kept on restarts
        self.control_ports: dict[str, int] = {}
        self.nodes: dict[str, Node] = {}
        self._serial = 0

    # -- router ---------------------------------------------------------------
    def start_router(self, name: str = "router", port: int | None = None) -> str:
        """Start (or restart, on its old port) one router and wait until it answers."""
        port = port or free_port()
        config: dict[str, dict[str, Any]] = {
            "server": {
                "host": HOST,
                "port": port,
                "control_port": self.control_ports.setdefault(name, free_port()),
            },
            "auth": {"node_token": self.token, "node_token_file": None},
            "registry": {"ttl_s": 6},
            "routing": {"no_capacity_wait_s": 20},
            "health": {"probe_interval_s": 0.5, "base_ejection_s": 2},
            "timeouts": {"connect_s": 1, "stream_idle_s": 5, "first_byte_s": 30},
        }
        for section, values in self.options.router_overrides.items():
            config.setdefault(section, {}).update(values)
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        url = f"http://{HOST}:{port}"
        proc = self.procs.start(
            ManagedProcess(
                name,
                spotrelay_argv("router", "--config", str(path)),
                log_path=self.workdir / "logs" / f"{name}.log",
            )
        )
        self.routers[name] = (url, proc)
        if not self.router_url:
            self.router_url, self.router = url, proc
        proc.wait_ready(lambda: http_ok(url + HEALTHZ), timeout=30)
        return url

    @property
    def router_urls(self) -> list[str]:
        """The data-plane URLs (clients)."""
        return [url for url, _proc in self.routers.values()]

    @property
    def control_urls(self) -> list[str]:
        """The control listeners' URLs, in the order of :attr:`router_urls` (agents, operators)."""
        return [self.control_url(name) for name in self.routers]

    def control_url(self, name: str) -> str:
        return f"http://{HOST}:{self.control_ports[name]}"

    def kill_router(self, name: str) -> None:
        """SIGKILL one router: a crash, not a shutdown (its open requests would be lost)."""
        self.routers[name][1].kill()

    def router_nodes(self) -> list[dict[str, Any]]:
        """The fleet as the first router that answers ``GET /nodes`` sees it; empty if none."""
        for name, (_url, proc) in self.routers.items():
            if proc.alive():
                nodes = self.nodes_at(self.control_url(name))
                if nodes is not None:
                    return nodes
        return []

    def control(self, url: str, timeout_s: float = 2.0) -> ControlClient:
        """The control-plane client of the router whose control listener is ``url``."""
        return ControlClient(url, self.token, timeout_s=timeout_s)

    def nodes_at(self, url: str) -> list[dict[str, Any]] | None:
        """One router's ``GET /nodes``; None if it does not answer."""
        try:
            return self.control(url).nodes().nodes.to_json()
        except ControlError:
            return None

    # -- nodes ----------------------------------------------------------------
    def _engine_argv(self, port: int) -> list[str]:
        opts = self.options
        if opts.engine_cmd:
            return shlex.split(opts.engine_cmd.format(port=port, host=HOST, model=opts.model))
        return spotrelay_argv(
            "sim",
            "vllm",
            "--host",
            HOST,
            "--port",
            str(port),
            "--model",
            opts.model,
            "--ttft-ms",
            str(opts.ttft_ms),
            "--itl-ms",
            str(opts.itl_ms),
            "--max-num-seqs",
            str(opts.max_num_seqs),
        )

    def launch_node(self, lifecycle: str = "spot") -> Node:
        """Boot one instance: IMDS, engine, then the agent that registers it."""
        self._serial += 1
        name = f"node-{self._serial}"
        engine_port, imds_port = free_port(), free_port()
        metrics_port = free_port() if self.options.agent_metrics else 0
        engine_url, imds_url = f"http://{HOST}:{engine_port}", f"http://{HOST}:{imds_port}"
        instance_id = f"i-{secrets.token_hex(8)}"
        imds = self._start(f"{name}-imds", self._imds_argv(imds_port, instance_id, lifecycle))
        engine = self._start(f"{name}-engine", self._engine_argv(engine_port))
        state_dir = self.workdir / "state" / name
        state_dir.mkdir(parents=True, exist_ok=True)
        agent_cfg = self._agent_config(name, engine_url, imds_url, metrics_port, state_dir)
        cfg_path = self.workdir / f"{name}-agent.yaml"
        cfg_path.write_text(yaml.safe_dump(agent_cfg))
        agent = self._start(f"{name}-agent", spotrelay_argv("agent", "--config", str(cfg_path)))
        node = Node(
            name,
            engine_url,
            imds_url,
            engine,
            imds,
            agent,
            time.monotonic(),
            instance_id=instance_id,
            lifecycle=lifecycle,
            metrics_port=metrics_port,
        )
        self.nodes[name] = node
        return node

    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        """Start one process of a node, its output in ``logs/<name>.log``."""
        log_path = self.workdir / "logs" / f"{name}.log"
        return self.procs.start(ManagedProcess(name, argv, log_path=log_path))

    def _imds_argv(self, port: int, instance_id: str, lifecycle: str) -> list[str]:
        return spotrelay_argv(
            "sim",
            "imds",
            "--host",
            HOST,
            "--port",
            str(port),
            "--instance-id",
            instance_id,
            "--local-ipv4",
            HOST,
            "--lifecycle",
            lifecycle,
        )

    def _agent_config(
        self, name: str, engine_url: str, imds_url: str, metrics_port: int, state_dir: Path
    ) -> dict[str, Any]:
        """The agent's config for node ``name``, heartbeating one router (round robin)."""
        return {
            "node": {"id": name, "advertise_url": engine_url},
            "router": {
                # One address per agent (round robin over routers): a load balancer's.
                "urls": [self.control_urls[(self._serial - 1) % len(self.routers)]],
                "node_token": self.token,
                "node_token_file": None,
            },
            "engine": {
                "url": engine_url,
                "model": self.options.model,
                "process_name": None,
                "systemd_unit": None,
                # A real engine may answer probes only between requests (llama.cpp).
                "timeout_s": 2 if self.options.engine_cmd is None else 15,
            },
            "imds": {"url": imds_url, "poll_interval_s": self.options.poll_interval_s},
            "heartbeat": {"interval_s": 1},
            "drain": {"safety_margin_s": 1, "stop_engine": False},
            "metrics": {"host": HOST, "port": metrics_port},
            "state_dir": str(state_dir),
        }

    def wait_node_ready(self, node: Node, timeout: float | None = None) -> None:
        """Block until the router lists ``node`` as ready."""
        deadline = time.monotonic() + (timeout or self.options.engine_ready_timeout_s)
        while time.monotonic() < deadline:
            if self.node_state(node.name) == "ready":
                return
            for proc in (node.imds, node.engine, node.agent):
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"{node.name} did not become ready in time:\n{node.agent.tail()}")

    def node_state(self, name: str) -> str | None:
        for entry in self.router_nodes():
            if entry.get("id") == name:
                return entry.get("state")
        return None

    def spot_notice(self, node: Node, lead_s: float) -> float:
        """Post a spot interruption notice; returns when (monotonic) EC2 would reclaim it."""
        sent = time.monotonic()
        state = _post_json(
            node.imds_url + "/_control/spot", {"action": "terminate", "lead_s": lead_s}
        )
        spot = (state.get("events") or {}).get("spot") or {}
        return sent + float(spot.get("seconds_left", lead_s))

    def rebalance(self, node: Node) -> None:
        """Post a rebalance recommendation (elevated risk, no deadline)."""
        _post_json(node.imds_url + "/_control/rebalance", {})

    def terminate(self, node: Node) -> None:
        """What EC2 does at the notice's time, or a hard kill: SIGKILL everything at once."""
        for proc in node.processes:
            proc.signal(9)
        for proc in node.processes:
            proc.kill()
        node.killed_at = time.monotonic()

    def freeze(self, node: Node, host: bool) -> None:
        """SIGSTOP the engine (a hung GPU: sockets open, nothing answers); with ``host``
        every process of the node (a host that froze: heartbeats stop too)."""
        for proc in node.processes if host else [node.engine]:
            proc.signal(signal.SIGSTOP)

    def thaw(self, node: Node) -> None:
        """SIGCONT every process of the node: the freeze is over."""
        for proc in node.processes:
            proc.signal(signal.SIGCONT)

    def kill_agent(self, node: Node) -> None:
        """The agent alone dies (crash, hang): engine and instance stay up, nobody polls IMDS."""
        node.agent.signal(9)
        node.agent.kill()

    def scale_in(self, node: Node) -> None:
        """What the Auto Scaling group does to a node it removes: Terminating:Wait."""
        _post_json(node.imds_url + "/_control/lifecycle", {"state": "Terminated"})

    def alive_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive()]

    def stop(self) -> None:
        self.procs.stop_all(timeout=8)
