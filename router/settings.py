"""The router's configuration schema (``router.yaml``) and its defaults."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from spotrelay.core.config import ConfigError, setting
from spotrelay.core.protocol import TOKEN_RE

PRIVATE_AND_LOOPBACK = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8"]


@dataclass
class Server:
    host: str = setting("0.0.0.0", help="address to bind")
    port: int = setting(8080, min=1, max=65535, help="port to bind")
    workers: int | None = setting(
        None,
        min=1,
        help="worker processes; default 1 with registry.backend memory (the only value "
        "allowed there), the number of cores with redis",
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
        False,
        help="also serve the control plane and /metrics on server.port (older agents that "
        "heartbeat the main port; they then queue behind data-plane clients)",
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
        default_factory=list,
        help="CIDRs without any per-address cap (prefer trusted_proxies for a load balancer)",
    )
    trusted_proxies: list[str] = setting(
        default_factory=list,
        help="CIDRs of proxies (the load balancer's subnets) whose X-Forwarded-For names the "
        "client: the per-address cap then counts that client's requests",
    )
    keepalive_min_s: float = setting(
        1,
        min=0,
        help="idle keep-alive timeout once a listener is overload_saturation_percent full",
    )
    overload_start_percent: float = setting(
        50,
        min=1,
        max=100,
        help="share of worker_connections open on a listener where idle timeouts start to shrink",
    )
    overload_saturation_percent: float = setting(
        90,
        min=1,
        max=100,
        help="share of worker_connections where idle connections get keepalive_min_s",
    )

    def validate(self) -> None:
        if self.control_port and self.control_port == self.port:
            raise ConfigError(
                "server.control_port", "must differ from server.port", self.control_port
            )
        for key in ("connection_cap_exempt", "trusted_proxies"):
            for i, net in enumerate(getattr(self, key)):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigError(f"server.{key}[{i}]", "not a CIDR", net) from None
        if self.overload_saturation_percent <= self.overload_start_percent:
            raise ConfigError(
                "server.overload_saturation_percent",
                "must be above server.overload_start_percent",
                self.overload_saturation_percent,
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
    ttl_s: float = setting(
        6, min=0.1, help="drop nodes silent this long (3 missed 2 s heartbeats), cutting their work"
    )
    allowed_networks: list[str] = setting(
        default_factory=lambda: list(PRIVATE_AND_LOOPBACK), help="CIDRs node URLs must resolve into"
    )
    max_nodes: int = setting(1000, min=1, help="registered nodes at most; more get 429")
    backend: str = setting(
        "memory",
        choices=("memory", "redis"),
        help="memory: one worker, one router's own view; redis: shared by every worker and router",
    )
    redis_url: str | None = setting(
        None,
        secret=True,
        help="redis://[user[:password]@]host[:port][/db] or rediss:// (TLS); Redis >= 7 or Valkey",
    )
    redis_password: str | None = setting(
        None, secret=True, help="Redis password/auth token (beats one in redis_url)"
    )
    redis_password_file: str | None = setting(
        None, help="file holding the Redis password (used if no redis_password)"
    )
    redis_ca_file: str | None = setting(
        None, help="rediss://: CA bundle to verify the server (default: the system's)"
    )
    redis_key_prefix: str = setting(
        "spotrelay", help="prefix of the keys and channel, so fleets can share one Redis"
    )
    redis_timeout_s: float = setting(2, min=0.05, help="Redis connect and command timeout")
    redis_backoff_max_s: float = setting(
        5, min=0.05, help="reconnect backoff cap (equal jitter, doubling from 0.1 s)"
    )

    def validate(self) -> None:
        for i, net in enumerate(self.allowed_networks):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"registry.allowed_networks[{i}]", "not a CIDR", net) from None
        if self.backend == "redis":
            if not self.redis_url:
                raise ConfigError("registry.redis_url", "required with registry.backend redis")
            check_redis_url(self.redis_url)
            if self.redis_ca_file and not self.redis_url.startswith("rediss://"):
                raise ConfigError(
                    "registry.redis_ca_file", "only used with a rediss:// (TLS) redis_url"
                )


def check_redis_url(url: str, key: str = "registry.redis_url") -> None:
    """A one-line ConfigError naming ``key`` for a URL redis-py could not use (password masked)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ConfigError(key, f"malformed: {exc}", mask_password(url)) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            key,
            "scheme must be redis:// or rediss:// (TLS)",
            mask_password(url),
        )
    if not parts.hostname:
        raise ConfigError(key, "has no host", mask_password(url))
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(key, "database must be a number", mask_password(url))


def mask_password(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(":" + parts.password + "@", ":<redacted>@", 1)
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable url>"


@dataclass
class Routing:
    no_capacity_wait_s: float = setting(30, min=0, help="wait this long for a node, then 503")
    session_header: str = setting("X-Session-ID", help="header for session affinity")
    max_body_bytes: int = setting(16 * 1024 * 1024, min=1, help="larger bodies get 413")
    retry_after_s: int = setting(5, min=1, help="Retry-After sent with a no-capacity 503")
    policy: str = setting(
        "cache_aware",
        choices=("cache_aware", "p2c"),
        help="cache_aware: the node a request's prompt prefix maps to (consistent hashing "
        "with bounded loads); p2c: power of two choices on open requests",
    )
    load_factor: float = setting(
        2.0,
        min=1.0,
        max=10.0,
        help="cache_aware: a node takes a request only while its open requests stay within "
        "this factor of the mean (1: strict balance, little affinity under load)",
    )
    load_slack: float = setting(
        2.0,
        min=0,
        help="cache_aware: ... or within the mean plus this many requests, whichever is more "
        "(a worker sees few open requests of its own)",
    )
    prefix_block_chars: int = setting(
        64, min=8, max=4096, help="cache_aware: prompt characters per prefix block (~16 tokens)"
    )
    prefix_anchor_chars: int = setting(
        1024,
        min=16,
        help="cache_aware: a bare prompt (completions) is placed by its first this many "
        "characters (chat: by the messages up to the first user message)",
    )
    risk_aware: bool = setting(
        True, help="keep long requests off nodes whose agent reports risk 'elevated'"
    )
    long_request_tokens: int = setting(
        1024,
        min=1,
        help="a request asking for at least this many tokens (or giving no limit) is long",
    )
    long_request_header: str = setting(
        "X-Spotrelay-Long",
        help="a client marks a request long (an agent loop) with this header set to 1 or true",
    )
    max_event_bytes: int = setting(
        8 * 1024 * 1024,
        min=64 * 1024,
        help="largest SSE event from a node; a bigger one (or a newline-free stream) is a "
        "stream break",
    )
    max_response_bytes: int = setting(
        256 * 1024 * 1024,
        min=1024,
        help="largest non-streaming answer from a node; past it 502 (or the relay is cut)",
    )
    response_buffer_bytes: int = setting(
        1024 * 1024,
        min=1024,
        help="a non-streaming answer up to this size is read whole before the client gets it "
        "(a node failing mid-body is retried); a larger one is relayed read by read",
    )
    max_form_parts: int = setting(
        1000, min=2, help="parts a multipart upload may have (vLLM's own form limit); more get 400"
    )
    assemble_non_streaming: list[str] = setting(
        default_factory=list,
        help="engine kinds (vllm, llama.cpp, ...) whose non-streaming completions and chat "
        "requests go to the engine as streams, the answer assembled by the router (stalls "
        "seen, breaks resumed); empty: forwarded as they came",
    )

    def validate(self) -> None:
        if self.response_buffer_bytes > self.max_response_bytes:
            raise ConfigError(
                "routing.response_buffer_bytes",
                "must not exceed routing.max_response_bytes",
                self.response_buffer_bytes,
            )
        for i, kind in enumerate(self.assemble_non_streaming):
            if not isinstance(kind, str) or not TOKEN_RE.fullmatch(kind):
                raise ConfigError(
                    f"routing.assemble_non_streaming[{i}]",
                    "not an engine kind such as vllm or llama.cpp",
                    kind,
                )


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
        600,
        min=0.1,
        help="longest wait for any byte of the answer, or a stream's first event (prefill)",
    )
    stream_idle_s: float = setting(60, min=0.1, help="max gap between stream chunks")
    request_deadline_s: float = setting(
        900,
        min=1,
        help="until a stream's first event or a whole non-streaming answer: attempts, backoff, "
        "waits and a trickling node included",
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
class Hedge:
    enabled: bool = setting(
        True, help="open a stalled stream's continuation on another node beside the original"
    )
    stall_multiple: float = setting(
        8, min=1, help="a gap over this many times the stream's (or node's) recent gap is a stall"
    )
    stall_floor_s: float = setting(
        1.5, min=0.1, help="...and over this many seconds (pauses shorter never count)"
    )
    max_per_stream: int = setting(2, min=0, max=10, help="hedges per stream at most")
    frozen_min_streams: int = setting(
        2,
        min=0,
        help="every stream open on a node stalled, at least this many: eject it (0: never)",
    )


@dataclass
class Tracing:
    enabled: bool = setting(
        False, help="OpenTelemetry traces (needs the otel extra); off imports nothing of it"
    )
    otlp_endpoint: str = setting(
        "http://127.0.0.1:4318/v1/traces", help="OTLP/HTTP traces endpoint (a collector)"
    )
    service_name: str = setting("spotrelay-router", help="the service.name resource attribute")
    sample_ratio: float = setting(
        1.0, min=0, max=1, help="share of new traces kept; a client's sampled flag wins"
    )


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
    hedge: Hedge = setting(default_factory=Hedge)
    tracing: Tracing = setting(default_factory=Tracing)

    def validate(self) -> None:
        workers = self.server.workers
        if self.registry.backend == "memory" and workers not in (None, 1):
            raise ConfigError(
                "server.workers",
                "must be 1 with registry.backend memory (each worker would see its own fleet); "
                "use registry.backend redis for more",
                workers,
            )


def worker_count(cfg: RouterConfig) -> int:
    """Gunicorn worker processes: as configured, else 1 (memory) or one per core (redis)."""
    if cfg.server.workers is not None:
        return cfg.server.workers
    return 1 if cfg.registry.backend == "memory" else usable_cores()


def usable_cores() -> int:
    """Cores this process may run on (a cpuset or taskset limits them), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
