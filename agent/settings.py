"""The agent's configuration schema (``agent.yaml``) and its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from spotrelay.core.config import ConfigError, setting
from spotrelay.core.protocol import (
    MAX_CAPABILITIES,
    TOKEN_RE,
    ProtocolError,
    parse_labels,
    valid_node_id,
)


def _check_url(key: str, url: str) -> None:
    """An http(s) URL with a host: caught at start, not at the first drain."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(key, "bad port in URL", url) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, "expected an http:// or https:// URL", url)


@dataclass
class Node:
    id: str | None = setting(None, help="node id; default: the EC2 instance-id from IMDS")
    advertise_url: str | None = setting(
        None, help="engine URL the router uses; default: http://<local-ipv4>:<engine port>"
    )
    labels: dict[str, str] = setting(
        default_factory=dict, help="extra labels sent to the routers (over the IMDS ones)"
    )

    def validate(self) -> None:
        if self.id is not None and not valid_node_id(self.id):
            raise ConfigError("node.id", "letters, digits and ._:- only (max 128)", self.id)
        if self.advertise_url is not None:
            _check_url("node.advertise_url", self.advertise_url)
        try:
            parse_labels(self.labels)  # the routers would refuse every heartbeat
        except ProtocolError as exc:
            raise ConfigError("node.labels", str(exc)) from None


@dataclass
class Router:
    urls: list[str] = setting(
        default_factory=lambda: ["http://router:8081"],  # the control listener
        help="routers to register with (comma-separated in env)",
    )
    node_token: str | None = setting(None, secret=True, help="bearer token for the routers")
    node_token_file: str | None = setting(
        "/etc/spotrelay/node-token", help="file holding the node token"
    )
    timeout_s: float = setting(2, min=0.05, max=60, help="HTTP timeout of each router call")

    def validate(self) -> None:
        if not self.urls:
            raise ConfigError("router.urls", "at least one router URL is needed")
        for i, url in enumerate(self.urls):
            _check_url(f"router.urls[{i}]", url)


@dataclass
class Engine:
    url: str = setting("http://127.0.0.1:8000", help="local vLLM server")
    model: str | None = setting(None, help="model the node must serve before registering")
    health_path: str = setting(
        "/health", help="engine health check; a 404 there falls back to /v1/models"
    )
    kind: str | None = setting(
        None, help="engine kind (vllm, sglang, llama.cpp, ...); empty = detect at start"
    )
    capabilities: list[str] | None = setting(
        None, help="capabilities to advertise (continue_final_message, echo); empty = by kind"
    )
    process_name: str | None = setting("vllm", help="process to watch (psutil); empty = skip")
    systemd_unit: str | None = setting("vllm.service", help="unit stopped after a drain")
    check_interval_s: float = setting(
        0.5, min=0.05, max=60, help="how often the engine process is checked (psutil)"
    )
    timeout_s: float = setting(
        2,
        min=0.05,
        max=60,
        help="HTTP timeout of engine probes; a health check not answered in it reports the "
        "node unhealthy at once",
    )
    stall_after_s: float = setting(
        10,
        min=0,
        help="requests running and vllm:generation_tokens_total unchanged this long: the engine "
        "is hung, reported unhealthy at once (0 = off)",
    )
    stop_timeout_s: float = setting(
        120, min=1, help="wait this long for 'systemctl stop' (vLLM --shutdown-timeout)"
    )
    unhealthy_after_s: float = setting(
        300,
        min=0,
        help="after the launch phase, an engine failing this long is drained and the instance "
        "marked Unhealthy in its ASG (0 = never)",
    )

    def validate(self) -> None:
        _check_url("engine.url", self.url)
        if not self.health_path.startswith("/"):
            raise ConfigError("engine.health_path", "must start with /", self.health_path)
        if self.kind is not None and not TOKEN_RE.fullmatch(self.kind):
            raise ConfigError("engine.kind", "a short name like vllm or llama.cpp", self.kind)
        caps = self.capabilities or []
        if len(caps) > MAX_CAPABILITIES:
            raise ConfigError("engine.capabilities", f"at most {MAX_CAPABILITIES} names")
        for i, cap in enumerate(caps):
            if not TOKEN_RE.fullmatch(cap):
                raise ConfigError(f"engine.capabilities[{i}]", "a short name", cap)


@dataclass
class Imds:
    url: str = setting("http://169.254.169.254", help="instance metadata service")
    poll_interval_s: float = setting(1, min=0.05, max=60, help="event polling interval")
    timeout_s: float = setting(1, min=0.05, max=30, help="HTTP timeout of each IMDS call")
    token_ttl_s: int = setting(
        21600, min=1, max=21600, help="IMDSv2 session token TTL; refreshed at 90 %"
    )

    def validate(self) -> None:
        _check_url("imds.url", self.url)


@dataclass
class Heartbeat:
    interval_s: float = setting(2, min=0.05, max=60, help="heartbeat period to each router")


@dataclass
class Drain:
    on_rebalance: bool = setting(False, help="drain on rebalance recommendations")
    safety_margin_s: float = setting(10, min=0, help="finish this long before the deadline")
    stop_engine: bool = setting(True, help="systemctl stop the engine after draining")
    timeout_s: float = setting(
        300, min=1, help="drain deadline for signals without a time (rebalance, scale-in)"
    )
    sigterm_timeout_s: float = setting(
        20, min=0, help="drain deadline when the agent itself is stopped (SIGTERM)"
    )
    maintenance_lead_s: float = setting(
        900, min=0, help="start draining this long before a scheduled event's NotBefore"
    )
    ack_timeout_s: float = setting(
        10, min=0.1, help="stop waiting for an unreachable router's drain acknowledgement"
    )


@dataclass
class Lifecycle:
    asg_name: str | None = setting(None, help="Auto Scaling group; empty = no lifecycle hook")
    hook_name: str | None = setting(None, help="termination lifecycle hook name")
    launch_hook_name: str | None = setting(
        None, help="launch lifecycle hook: CONTINUE once serving (empty = no readiness gate)"
    )
    launch_timeout_s: float = setting(
        1800,
        min=1,
        help="launch phase budget: ABANDON the launch hook if not serving by then",
    )
    region: str | None = setting(None, help="AWS region; default: from IMDS placement")
    endpoint_url: str | None = setting(None, help="Auto Scaling API endpoint override (tests)")
    heartbeat_interval_s: float = setting(
        30,
        min=1,
        help="RecordLifecycleActionHeartbeat period while a drain runs or the model loads",
    )

    def validate(self) -> None:
        if (self.hook_name or self.launch_hook_name) and not self.asg_name:
            raise ConfigError("lifecycle.asg_name", "needed with a lifecycle hook name")
        if self.asg_name and not (self.hook_name or self.launch_hook_name):
            raise ConfigError("lifecycle.hook_name", "asg_name and hook_name must be set together")


@dataclass
class Metrics:
    host: str = setting("127.0.0.1", help="address of the agent's own /metrics")
    port: int = setting(9101, min=0, max=65535, help="port of /metrics; 0 = disabled")


@dataclass
class Webhook:
    url: str | None = setting(None, help="POST a JSON summary of each interruption here")
    timeout_s: float = setting(5, min=0.1, max=60, help="HTTP timeout of each webhook POST")

    def validate(self) -> None:
        if self.url:
            _check_url("webhook.url", self.url)


@dataclass
class CloudWatch:
    enabled: bool = setting(False, help="publish the engine's load for target-tracking scaling")
    namespace: str = setting("spotrelay", help="CloudWatch namespace of the load metrics")
    pool: str | None = setting(None, help="Pool dimension; default: lifecycle.asg_name")
    interval_s: float = setting(60, min=0.1, help="one PutMetricData per interval")
    timeout_s: float = setting(5, min=0.1, max=30, help="connect and read timeout of each call")
    region: str | None = setting(None, help="AWS region; default: from IMDS placement")
    endpoint_url: str | None = setting(None, help="CloudWatch API endpoint override (tests)")

    def validate(self) -> None:
        if self.endpoint_url:
            _check_url("cloudwatch.endpoint_url", self.endpoint_url)


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
    cloudwatch: CloudWatch = setting(default_factory=CloudWatch)
