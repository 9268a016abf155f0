"""``spotrelay demo``: flags and entry point (the work is in :mod:`spotrelay.sim.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

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


# flag -> (section, key); flags left unset fall back to config, env, then defaults.
FLAGS = {
    "nodes": ("demo", "nodes", int, "nodes in the fleet (3)"),
    "duration": ("demo", "duration_s", float, "seconds of traffic (60)"),
    "preemptions": ("demo", "preemptions", int, "spot interruption notices to inject (2)"),
    "hard_kills": ("demo", "hard_kills", int, "nodes to SIGKILL without notice (1)"),
    "lead_s": ("demo", "lead_s", float, "notice lead time; AWS gives 120 s (10)"),
    "rps": ("demo", "rps", float, "average requests per second (20; 1 with --engine-cmd)"),
    "stream_ratio": ("demo", "stream_ratio", float, "share of streaming requests (0.5)"),
    "max_tokens": (
        "demo",
        "max_tokens",
        int,
        "upper bound of max_tokens per request (48; 24 with --engine-cmd)",
    ),
    "seed": ("demo", "seed", int, "RNG seed for traffic and chaos (7)"),
    "out": ("demo", "out", str, "directory for report.json, timeline.png, logs (demo-out)"),
    "routers": ("demo", "routers", int, "routers behind the traffic's round robin (1)"),
    "redis": (
        "demo",
        "redis",
        str,
        "shared registry for --routers > 1: redis://HOST:PORT, or auto (local redis-server)",
    ),
    "spot_shortage": (
        "demo",
        "spot_shortage",
        str,
        "START:END seconds: spot launches fail, the controller falls back to on-demand",
    ),
    "dead_agents": (
        "demo",
        "dead_agents",
        int,
        "kill this many nodes' agents, then send their spot notice through the queue (0)",
    ),
    "freezes": (
        "demo",
        "freezes",
        int,
        "engines to freeze (SIGSTOP, sockets open) for --freeze-s, their agent running (1)",
    ),
    "host_freezes": (
        "demo",
        "host_freezes",
        int,
        "nodes to freeze whole (engine and agent), then terminate after --freeze-s (1)",
    ),
    "freeze_s": ("demo", "freeze_s", float, "how long a freeze lasts, seconds (9)"),
    "rebalance_lead": (
        "demo",
        "rebalance_lead_s",
        float,
        "rebalance recommendation this many seconds before each spot notice (0: none)",
    ),
    "long_ratio": ("demo", "long_ratio", float, "share of streams that run long (0)"),
    "long_max_tokens": ("demo", "long_max_tokens", int, "max_tokens of a long stream (300)"),
    "risk_placement": (
        "demo",
        "risk_placement",
        on_off,
        "on|off: keep long requests off nodes at risk (on)",
    ),
    "model": ("engine", "model", str, "model name to serve and request (sim-model)"),
    "ttft_ms": ("engine", "ttft_ms", int, "simulator time to first token (40)"),
    "itl_ms": ("engine", "itl_ms", int, "simulator inter-token latency (15)"),
    "poll_interval_s": ("engine", "poll_interval_s", float, "agents' IMDS poll interval (0.5)"),
    "engine_cmd": (
        "engine",
        "cmd",
        str,
        "run this engine instead of the simulator; {port}, {host} and {model} "
        "are substituted (text is then not verified)",
    ),
}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from spotrelay.core.config import describe

    from .demo_settings import DemoConfig

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="a local spot fleet under injected preemptions",
        description="Start a router and N nodes (engine simulator + IMDS emulator + agent) on "
        "loopback, drive OpenAI traffic, inject spot notices and hard kills, "
        "replace lost nodes, and report what clients saw.",
        epilog=EPILOG + "\n" + describe(DemoConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for dest, (_section, _key, kind, help_text) in FLAGS.items():
        p.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, type=kind, default=None, help=help_text
        )
    p.add_argument(
        "--prometheus",
        action="store_const",
        const=True,
        default=None,
        help="run a real Prometheus (binary on PATH) with the shipped alert rules, for: "
        "shortened a minute to a second; the report lists the alerts that fired",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="periodic log lines instead of a live progress line",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from spotrelay.core.config import load

    from .demo import DemoOptions, run
    from .demo_settings import DemoConfig
    from .fleet import FleetOptions

    overrides: dict[str, dict[str, object]] = {"demo": {}, "engine": {}}
    for dest, (section, key, _kind, _help) in FLAGS.items():
        overrides[section][key] = getattr(args, dest)
    overrides["demo"]["prometheus"] = args.prometheus
    cfg = load(DemoConfig, args.config, overrides=overrides)
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
        nodes=d.nodes,
        duration_s=d.duration_s,
        preemptions=d.preemptions,
        hard_kills=d.hard_kills,
        lead_s=d.lead_s,
        rps=rps,
        stream_ratio=d.stream_ratio,
        seed=d.seed,
        out=Path(d.out),
        fleet=fleet,
        max_tokens=max_tokens,
        progress=not args.no_progress,
        routers=d.routers,
        redis=d.redis,
        spot_shortage=parse_window("demo.spot_shortage", d.spot_shortage),
        dead_agents=d.dead_agents,
        freezes=d.freezes,
        host_freezes=d.host_freezes,
        freeze_s=d.freeze_s,
        rebalance_lead_s=d.rebalance_lead_s,
        long_ratio=d.long_ratio,
        long_max_tokens=d.long_max_tokens,
        risk_placement=d.risk_placement,
        prometheus=d.prometheus,
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
