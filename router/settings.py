"""The router's configuration schema (``router.yaml``) and its defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from spotrelay.core.config import ConfigError, setting

PRIVATE_AND_LOOPBACK = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"]


@dataclass
class Server:
    host: str = setting("0.0.0.0", help="address to bind")
    port: int = setting(8080, min=1, max=65535, help="port to bind")
    workers: int = setting(
        1, min=1, help="worker processes; must be 1 (the registry lives in memory)"
    )
    threads: int = setting(64, min=1, max=10000, help="threads per worker (gthread worker)")
    worker_class: str = setting(
        "gevent",
        choices=("gevent", "gthread"),
        help="gunicorn worker class; gevent holds hundreds of streams per process",
    )
    worker_connections: int = setting(4000, min=1, help="gevent: concurrent connections")
    keepalive_s: float = setting(
        75, min=0, help="client keep-alive; above a load balancer's idle timeout (ALB: 60 s)"
    )
    graceful_timeout_s: float = setting(
        30, min=0, help="on SIGTERM, let open requests finish for this long"
    )
    access_log: bool = setting(True, help="one log line per proxied request")
    upstream_pool_size: int = setting(256, min=1, help="idle keep-alive connections kept per node")
    control_port: int = setting(
        8081,
        min=0,
        max=65535,
        help="second listener for /nodes, /instances and the ops endpoints, with its own "
        "connection pool (0: none)",
    )
    control_on_main_port: bool = setting(
        True, help="also serve the control plane and /metrics on server.port (older configs)"
    )
    header_timeout_s: float = setting(
        20, min=0.1, help="a request line and headers must arrive within this long"
    )
    body_timeout_s: float = setting(
        120, min=0.1, help="a request body must arrive within this long of its headers"
    )
    max_connections_per_ip: int = setting(
        1000, min=0, help="open connections per client address and listener (0: no cap)"
    )
    connection_cap_exempt: list[str] = setting(
        default_factory=list, help="CIDRs without a per-address cap (the load balancer's subnets)"
    )

    def validate(self) -> None:
        if self.control_port and self.control_port == self.port:
            raise ConfigError(
                "server.control_port", "must differ from server.port", self.control_port
            )
        for i, net in enumerate(self.connection_cap_exempt):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"server.connection_cap_exempt[{i}]", "not a CIDR", net) from None
        if self.workers != 1:
            raise ConfigError(
                "server.workers", "must be 1 \u2014 the registry lives in memory", self.workers
            )


@dataclass
class Auth:
    node_token: str | None = setting(
        None, secret=True, help="bearer token agents must present (control plane)"
    )
    node_token_file: str | None = setting(
        "/etc/spotrelay/node-token", help="file holding the node token (used if no inline)"
    )
    api_keys: list[str] = setting(
        default_factory=list, secret=True, help="data-plane API keys; empty = no client auth"
    )


@dataclass
class Registry:
    ttl_s: float = setting(15, min=0.1, help="drop nodes silent for this long")
    allowed_networks: list[str] = setting(
        default_factory=lambda: list(PRIVATE_AND_LOOPBACK), help="CIDRs node URLs must resolve into"
    )
    max_nodes: int = setting(1000, min=1, help="registered nodes at most; more get 429")

    def validate(self) -> None:
        for i, net in enumerate(self.allowed_networks):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"registry.allowed_networks[{i}]", "not a CIDR", net) from None


@dataclass
class Routing:
    no_capacity_wait_s: float = setting(30, min=0, help="wait this long for a node, then 503")
    session_header: str = setting("X-Session-ID", help="header for session affinity")
    max_body_bytes: int = setting(16 * 1024 * 1024, min=1, help="larger bodies get 413")
    retry_after_s: int = setting(5, min=1, help="Retry-After sent with a no-capacity 503")


@dataclass
class Retry:
    max_attempts: int = setting(3, min=1, max=10, help="attempts per request, first included")
    backoff_base_ms: float = setting(25, min=0, help="full-jitter backoff base")
    backoff_max_ms: float = setting(250, min=0, help="backoff cap")
    budget_percent: float = setting(20, min=0, max=100, help="retries <= this % of active")
    min_retry_concurrency: int = setting(3, min=0, help="retries always allowed up to this many")
    budget_wait_s: float = setting(
        30, min=0, help="a retry over budget waits this long for a slot (0: fail at once)"
    )


@dataclass
class Timeouts:
    connect_s: float = setting(2, min=0.01, help="TCP connect timeout to a node")
    first_byte_s: float = setting(
        600, min=0.1, help="wait for the whole answer, or a stream's first event (prefill)"
    )
    stream_idle_s: float = setting(60, min=0.1, help="max gap between stream chunks")
    request_deadline_s: float = setting(
        900, min=1, help="until the answer starts: attempts, backoff and waits included"
    )


@dataclass
class Health:
    consecutive_failures: int = setting(3, min=1, help="failures that eject a node")
    base_ejection_s: float = setting(10, min=0.01, help="first ejection; grows per ejection")
    max_ejection_s: float = setting(300, min=0.1, help="ejection cap")
    probe_interval_s: float = setting(2, min=0.05, help="active /health probe of ejected nodes")
    probe_timeout_s: float = setting(2, min=0.05, help="timeout of one /health probe")


@dataclass
class Resume:
    enabled: bool = setting(True, help="resume broken streams on another node")
    max_attempts: int = setting(2, min=0, max=10, help="resumes per request")


@dataclass
class RouterConfig:
    server: Server = setting(default_factory=Server)
    auth: Auth = setting(default_factory=Auth)
    registry: Registry = setting(default_factory=Registry)
    routing: Routing = setting(default_factory=Routing)
    retry: Retry = setting(default_factory=Retry)
    timeouts: Timeouts = setting(default_factory=Timeouts)
    health: Health = setting(default_factory=Health)
    resume: Resume = setting(default_factory=Resume)
