"""The agent's configuration schema (``agent.yaml``); defaults from DESIGN.md."""

from __future__ import annotations

from dataclasses import dataclass

from spotrelay.core.config import setting


@dataclass
class Node:
    id: str | None = setting(None, help="node id; default: the EC2 instance-id from IMDS")
    advertise_url: str | None = setting(
        None, help="engine URL the router uses; default: http://<local-ipv4>:<engine port>"
    )


@dataclass
class Router:
    urls: list[str] = setting(
        default_factory=lambda: ["http://router:8080"],
        help="routers to register with (comma-separated in env)",
    )
    node_token: str | None = setting(None, secret=True, help="bearer token for the routers")
    node_token_file: str | None = setting(
        "/etc/spotrelay/node-token", help="file holding the node token"
    )


@dataclass
class Engine:
    url: str = setting("http://127.0.0.1:8000", help="local vLLM server")
    model: str | None = setting(None, help="model the node must serve before registering")
    process_name: str | None = setting("vllm", help="process to watch (psutil); empty = skip")
    systemd_unit: str | None = setting("vllm.service", help="unit stopped after a drain")


@dataclass
class Imds:
    url: str = setting("http://169.254.169.254", help="instance metadata service")
    poll_interval_s: float = setting(1, min=0.05, max=60, help="event polling interval")


@dataclass
class Heartbeat:
    interval_s: float = setting(2, min=0.05, max=60, help="heartbeat period to each router")


@dataclass
class Drain:
    on_rebalance: bool = setting(False, help="drain on rebalance recommendations")
    safety_margin_s: float = setting(10, min=0, help="finish this long before the deadline")
    stop_engine: bool = setting(True, help="systemctl stop the engine after draining")


@dataclass
class Lifecycle:
    asg_name: str | None = setting(None, help="Auto Scaling group; empty = no lifecycle hook")
    hook_name: str | None = setting(None, help="termination lifecycle hook name")
    region: str | None = setting(None, help="AWS region; default: from IMDS placement")
    endpoint_url: str | None = setting(None, help="Auto Scaling API endpoint override (tests)")


@dataclass
class Metrics:
    host: str = setting("127.0.0.1", help="address of the agent's own /metrics")
    port: int = setting(9101, min=0, max=65535, help="port of /metrics; 0 = disabled")


@dataclass
class Webhook:
    url: str | None = setting(None, help="POST a JSON summary of each interruption here")


@dataclass
class AgentConfig:
    node: Node = setting(default_factory=Node)
    router: Router = setting(default_factory=Router)
    engine: Engine = setting(default_factory=Engine)
    imds: Imds = setting(default_factory=Imds)
    heartbeat: Heartbeat = setting(default_factory=Heartbeat)
    drain: Drain = setting(default_factory=Drain)
    lifecycle: Lifecycle = setting(default_factory=Lifecycle)
    metrics: Metrics = setting(default_factory=Metrics)
    state_dir: str = setting("/var/lib/spotrelay", help="where the drain state survives restarts")
    webhook: Webhook = setting(default_factory=Webhook)
