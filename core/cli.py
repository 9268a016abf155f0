"""The ``spotrelay`` command: one entry point, one subcommand per component.

Each component owns a ``cli`` module with ``register(subparsers, common)``
that adds its subcommand(s) and sets ``handler`` (``args -> exit code``).
Those modules keep their top-level imports light so ``spotrelay --help`` and
the agent start fast; heavy imports happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import logs
from .config import ConfigError

COMPONENT_CLIS = (
    "spotrelay.router.cli",
    "spotrelay.agent.cli",
    "spotrelay.sim.cli",
    "spotrelay.core.deploy_cli",
)

EXIT_CONFIG = 2


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts (``--config`` and logging)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML configuration file (keys below; env vars override it)",
    )
    common.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    common.add_argument(
        "--log-format",
        default="human",
        choices=["human", "json"],
        help="human-readable lines or JSON lines",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotrelay",
        description="Serve LLMs on spot GPUs: stateless failover for vLLM.",
        epilog="Every subcommand takes --config FILE.yaml; every key can be overridden by "
        "SPOTRELAY_<SECTION>_<KEY>. Run 'spotrelay <command> --help' for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    common = common_options()
    for name in COMPONENT_CLIS:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"spotrelay: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
