"""``spotrelay demo``: flags and entry point (the work is in :mod:`spotrelay.sim.demo`)."""

from __future__ import annotations

import argparse

from spotrelay.core.cli import add_command
from spotrelay.core.config_flags import Flag, overrides

EPILOG = """\
examples:
  spotrelay demo                 # 3 nodes, 60 s: 2 notices, 1 hard kill, 1 freeze, 1 host freeze
  spotrelay demo --nodes 4 --duration 120 --rps 40 --out /tmp/demo
  spotrelay demo --routers 2 --redis auto         # shared registry; one router SIGKILLed
  spotrelay demo --spot-shortage 10:40 --dead-agents 1   # fallback to on-demand, off-node notice
  spotrelay demo --prometheus     # + a real Prometheus with the alert rules; alerts reported
  spotrelay demo --freezes 2 --host-freezes 0 --freeze-s 15   # hung GPUs, no socket closed
  spotrelay demo --engine-cmd 'vllm serve Qwen/Qwen2.5-0.5B-Instruct --port {port}' \\
                 --model Qwen/Qwen2.5-0.5B-Instruct --lead-s 30
  spotrelay demo --model smollm2 --engine-cmd \\
    'python -m llama_cpp.server --model GGUF --model_alias {model} --host {host} --port {port}
     --interrupt_requests false'       # llama.cpp on a CPU; docs/demo.md says where GGUF is

Exit status 0 only if no client saw a failure. See docs/demo.md for every figure.
Flags override --config (sections demo: and engine:) and SPOTRELAY_DEMO_* /
SPOTRELAY_ENGINE_* environment variables.
"""


def on_off(value: str) -> bool:
    """``on`` or ``off`` (argparse reports anything else as an invalid value)."""
    if value not in ("on", "off"):
        raise ValueError(value)
    return value == "on"


# Each flag overrides one key of DemoConfig; a flag left unset falls back to config, env,
# then the default.
FLAGS = {
    "nodes": Flag("demo.nodes", "nodes in the fleet (3)", type=int),
    "duration": Flag("demo.duration_s", "seconds of traffic (60)", type=float),
    "preemptions": Flag("demo.preemptions", "spot interruption notices to inject (2)", type=int),
    "hard_kills": Flag("demo.hard_kills", "nodes to SIGKILL without notice (1)", type=int),
    "lead_s": Flag("demo.lead_s", "notice lead time; AWS gives 120 s (10)", type=float),
    "rps": Flag("demo.rps", "average requests per second (20; 1 with --engine-cmd)", type=float),
    "stream_ratio": Flag("demo.stream_ratio", "share of streaming requests (0.5)", type=float),
    "max_tokens": Flag(
        "demo.max_tokens",
        "upper bound of max_tokens per request (48; 24 with --engine-cmd)",
        type=int,
    ),
    "seed": Flag("demo.seed", "RNG seed for traffic and chaos (7)", type=int),
    "out": Flag("demo.out", "directory for report.json, timeline.png, logs (demo-out)"),
    "routers": Flag("demo.routers", "routers behind the traffic's round robin (1)", type=int),
    "redis": Flag(
        "demo.redis",
        "shared registry for --routers > 1: redis://HOST:PORT, or auto (local redis-server)",
    ),
    "spot_shortage": Flag(
        "demo.spot_shortage",
        "START:END seconds: spot launches fail, the controller falls back to on-demand",
    ),
    "dead_agents": Flag(
        "demo.dead_agents",
        "kill this many nodes' agents, then send their spot notice through the queue (0)",
        type=int,
    ),
    "freezes": Flag(
        "demo.freezes",
        "engines to freeze (SIGSTOP, sockets open) for --freeze-s, their agent running (1)",
        type=int,
    ),
    "host_freezes": Flag(
        "demo.host_freezes",
        "nodes to freeze whole (engine and agent), then terminate after --freeze-s (1)",
        type=int,
    ),
    "freeze_s": Flag("demo.freeze_s", "how long a freeze lasts, seconds (9)", type=float),
    "rebalance_lead": Flag(
        "demo.rebalance_lead_s",
        "rebalance recommendation this many seconds before each spot notice (0: none)",
        type=float,
    ),
    "long_ratio": Flag("demo.long_ratio", "share of streams that run long (0)", type=float),
    "long_max_tokens": Flag("demo.long_max_tokens", "max_tokens of a long stream (300)", type=int),
    "risk_placement": Flag(
        "demo.risk_placement", "on|off: keep long requests off nodes at risk (on)", type=on_off
    ),
    "model": Flag("engine.model", "model name to serve and request (sim-model)"),
    "ttft_ms": Flag("engine.ttft_ms", "simulator time to first token (40)", type=int),
    "itl_ms": Flag("engine.itl_ms", "simulator inter-token latency (15)", type=int),
    "poll_interval_s": Flag(
        "engine.poll_interval_s", "agents' IMDS poll interval (0.5)", type=float
    ),
    "engine_cmd": Flag(
        "engine.cmd",
        "run this engine instead of the simulator; {port}, {host} and {model} "
        "are substituted (text is then not verified)",
    ),
    "prometheus": Flag(
        "demo.prometheus",
        "run a real Prometheus (binary on PATH) with the shipped alert rules, for: "
        "shortened a minute to a second; the report lists the alerts that fired",
        switch=True,
    ),
}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from .demo_settings import DemoConfig

    p = add_command(
        sub,
        common,
        "demo",
        help="a local spot fleet under injected preemptions",
        description="Start a router and N nodes (engine simulator + IMDS emulator + agent) on "
        "loopback, drive OpenAI traffic, inject spot notices and hard kills, "
        "replace lost nodes, and report what clients saw.",
        config=DemoConfig,
        epilog=EPILOG,
        flags=FLAGS,
        handler=_run,
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="periodic log lines instead of a live progress line",
    )


def _run(args: argparse.Namespace) -> int:
    from spotrelay.core.config import load

    from .demo import DemoOptions, run
    from .demo_settings import DemoConfig
    from .fleet import FleetOptions

    cfg = load(DemoConfig, args.config, overrides=overrides(args, FLAGS))
    d, e = cfg.demo, cfg.engine
    rps, max_tokens = d.load_for(real_engine=e.cmd is not None)
    fleet = FleetOptions(
        model=e.model,
        ttft_ms=e.ttft_ms,
        itl_ms=e.itl_ms,
        poll_interval_s=e.poll_interval_s,
        engine_cmd=e.cmd,
        engine_ready_timeout_s=e.ready_timeout_s,
    )
    options = DemoOptions(
        d,
        fleet,
        rps=rps,
        max_tokens=max_tokens,
        spot_shortage=parse_window("demo.spot_shortage", d.spot_shortage),
        progress=not args.no_progress,
    )
    return run(options)


def parse_window(key: str, value: str | None) -> tuple[float, float] | None:
    """``START:END`` in seconds, START < END; a ConfigError naming ``key`` otherwise."""
    from spotrelay.core.config import ConfigError

    if not value:
        return None
    try:
        start, end = (float(part) for part in value.split(":"))
    except ValueError:
        raise ConfigError(key, "expected START:END in seconds, e.g. 10:40", value) from None
    if not 0 <= start < end:
        raise ConfigError(key, "START must be >= 0 and below END", value)
    return start, end
