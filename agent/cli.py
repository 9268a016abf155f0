"""``spotrelay agent [--dry-run]`` and ``spotrelay agent check``.

Top-level imports stay light (``spotrelay --help`` loads every component's
CLI); the agent itself is imported inside the handlers.
"""

from __future__ import annotations

import argparse

from spotrelay.core.cli import add_command
from spotrelay.core.config import load
from spotrelay.core.units_cli import add_install_unit_options, install_unit

from .settings import AgentConfig


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub,
        common,
        "agent",
        help="node agent: IMDS interruption monitors, heartbeats, drain",
        description=(
            "Run the node agent next to vLLM: register the node with the routers when the "
            "engine is ready, heartbeat its load, and drain it on spot interruption, "
            "rebalance (optional), ASG scale-in, scheduled maintenance or SIGTERM. "
            "'spotrelay agent check' prints what IMDS, the engine and the routers say "
            "(exit 0 iff the node is ready)."
        ),
        config=AgentConfig,
        handler=_handle,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["run", "check", "install-unit"],
        default="run",
        help="run the agent (default), check the node and exit, or install the systemd "
        "unit, polkit rule and example config from the package",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="watch and log what would be done; no router, AWS or systemctl calls",
    )
    p.add_argument("--json", action="store_true", help="check: print the findings as JSON")
    add_install_unit_options(p)


def _handle(args: argparse.Namespace) -> int:
    if args.action == "install-unit":
        return install_unit("agent", args)
    cfg = load(AgentConfig, args.config)
    if args.action == "check":
        from .check import run_check

        return run_check(cfg, args.config, as_json=args.json)
    from .service import Agent

    return Agent(cfg, dry_run=args.dry_run).run()
