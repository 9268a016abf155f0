"""The demo's configuration schema: flags, ``--config`` YAML and env share these keys."""

from __future__ import annotations

from dataclasses import dataclass

from spotrelay.core.config import ConfigError, setting


@dataclass
class Run:
    nodes: int = setting(3, min=1, max=32, help="nodes in the fleet")
    duration_s: float = setting(60.0, min=1, help="seconds of traffic")
    preemptions: int = setting(2, min=0, help="spot interruption notices to inject")
    hard_kills: int = setting(1, min=0, help="nodes to SIGKILL without notice")
    lead_s: float = setting(10.0, min=0.5, help="notice lead time (AWS: 120 s)")
    rps: float | None = setting(
        None, min=0.1, help="average requests per second; default 20, 1 with engine.cmd"
    )
    stream_ratio: float = setting(0.5, min=0, max=1, help="share of streaming requests")
    max_tokens: int | None = setting(
        None, min=2, help="upper bound of max_tokens per request; default 48, 24 with engine.cmd"
    )

    def load_for(self, real_engine: bool) -> tuple[float, int]:
        """(rps, max_tokens): a real engine on a laptop serves a few requests a second."""
        rps = self.rps if self.rps is not None else (1.0 if real_engine else 20.0)
        max_tokens = self.max_tokens if self.max_tokens is not None else (24 if real_engine else 48)
        return rps, max_tokens

    seed: int = setting(7, help="RNG seed for traffic and chaos")
    out: str = setting("demo-out", help="directory for report.json, timeline.png and logs")
    routers: int = setting(1, min=1, max=8, help="routers; more than one needs redis")
    redis: str | None = setting(
        None, help="shared registry: redis://HOST:PORT, or auto (start a local redis-server)"
    )
    spot_shortage: str | None = setting(
        None, help="START:END seconds after traffic starts: replacements cannot launch as spot"
    )
    dead_agents: int = setting(
        0, min=0, help="nodes whose agent is killed before their spot notice (heard via the queue)"
    )
    freezes: int = setting(
        1, min=0, help="engines frozen (SIGSTOP, sockets open) for freeze_s, their agent running"
    )
    host_freezes: int = setting(
        1, min=0, help="nodes frozen whole (engine and agent: heartbeats stop), then terminated"
    )
    freeze_s: float = setting(
        9.0,
        min=0.5,
        max=300,
        help="how long a freeze lasts (a frozen host is terminated after it: longer than the "
        "demo router's 6 s registry TTL, so the router notices the silence first, as it would "
        "long before EC2's status checks)",
    )
    rebalance_lead_s: float = setting(
        0.0,
        min=0,
        help="EC2 sends the node a rebalance recommendation this long before each spot "
        "notice (0: none)",
    )
    long_ratio: float = setting(
        0.0, min=0, max=1, help="share of streams that are long generations (agent loops)"
    )
    long_max_tokens: int = setting(
        300, min=2, help="max_tokens of a long stream; the router's long_request_tokens too"
    )
    risk_placement: bool = setting(
        True, help="the router keeps long requests off nodes at risk (routing.risk_aware)"
    )
    prometheus: bool = setting(
        False, help="run a real Prometheus with the alert rules; the report lists what fired"
    )

    def validate(self) -> None:
        if self.routers > 1 and not self.redis:
            raise ConfigError(
                "demo.redis",
                "more than one router needs a shared registry: --redis URL or --redis auto",
            )
        if self.redis and self.redis != "auto":
            from spotrelay.router.settings import check_redis_url

            check_redis_url(self.redis, "demo.redis")


@dataclass
class Engine:
    model: str = setting("sim-model", help="model name to serve and request")
    ttft_ms: int = setting(40, min=0, help="simulator time to first token")
    itl_ms: int = setting(15, min=0, help="simulator inter-token latency")
    cmd: str | None = setting(None, help="real engine command; {port} {host} {model} filled in")
    ready_timeout_s: float = setting(60.0, min=1, help="how long a node may take to be ready")
    poll_interval_s: float = setting(0.5, min=0.05, help="agents' IMDS poll interval")


@dataclass
class DemoConfig:
    demo: Run = setting(default_factory=Run)
    engine: Engine = setting(default_factory=Engine)
