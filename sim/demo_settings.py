"""The demo's configuration schema: flags, ``--config`` YAML and env share these keys."""

from __future__ import annotations

from dataclasses import dataclass

from spotrelay.core.config import setting


@dataclass
class Run:
    nodes: int = setting(3, min=1, max=32, help="nodes in the fleet")
    duration_s: float = setting(60.0, min=1, help="seconds of traffic")
    preemptions: int = setting(2, min=0, help="spot interruption notices to inject")
    hard_kills: int = setting(1, min=0, help="nodes to SIGKILL without notice")
    lead_s: float = setting(10.0, min=0.5, help="notice lead time (AWS: 120 s)")
    rps: float = setting(20.0, min=0.1, help="average requests per second")
    stream_ratio: float = setting(0.5, min=0, max=1, help="share of streaming requests")
    max_tokens: int = setting(48, min=2, help="upper bound of max_tokens per request")
    seed: int = setting(7, help="RNG seed for traffic and chaos")
    out: str = setting("demo-out", help="directory for report.json, timeline.png and logs")
    spot_shortage: str | None = setting(
        None, help="START:END seconds after traffic starts: replacements cannot launch as spot"
    )
    dead_agents: int = setting(
        0, min=0, help="nodes whose agent is killed before their spot notice (heard via the queue)"
    )


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
