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
from collections.abc import Callable, Mapping, Sequence

from . import extras, logs
from .config import ConfigError, describe
from .config_flags import Flag, add_flags

# Each component's CLI module and the top-level commands it registers. Only the
# module of the command being run is imported, so ``spotrelay agent`` on a GPU
# node loads nothing of the router or the simulator (whose dependencies an
# agent-only install does not have); ``--help`` and unknown commands load all.
COMPONENT_CLIS: dict[str, tuple[str, ...]] = {
    "spotrelay.router.cli": ("router",),
    "spotrelay.agent.cli": ("agent",),
    "spotrelay.sim.cli": ("sim", "demo"),
    "spotrelay.deploy.cli": ("up", "down", "status", "preflight", "scale"),
}

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


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    *,
    help: str,
    description: str,
    handler: Callable[[argparse.Namespace], int],
    config: type | None = None,
    flags: Mapping[str, Flag] | None = None,
    epilog: str = "",
) -> argparse.ArgumentParser:
    """A component's subcommand: the common options, then ``flags`` (see
    :mod:`.config_flags`); the texts printed as written, every key of the ``config``
    schema after ``epilog`` (``--help`` is the reference); ``handler`` runs it."""
    if config is not None:
        epilog = "\n".join(text for text in (epilog, describe(config)) if text)
    parser = sub.add_parser(
        name,
        parents=[common],
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, flags or {})
    parser.set_defaults(handler=handler)
    return parser


def _modules_for(argv: Sequence[str]) -> list[str]:
    command = next((a for a in argv if not a.startswith("-")), None)
    owners = [m for m, commands in COMPONENT_CLIS.items() if command in commands]
    return owners or list(COMPONENT_CLIS)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotrelay",
        description="Serve LLMs on spot GPUs: stateless failover for vLLM.",
        epilog="Every subcommand takes --config FILE.yaml; every key can be overridden by "
        "SPOTRELAY_<SECTION>_<KEY>. Run 'spotrelay <command> --help' for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    common = common_options()
    for name in _modules_for(argv):
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        extras.require(args.command, getattr(args, "action", None))
        return int(args.handler(args) or 0)
    except extras.MissingExtra as exc:
        print(f"spotrelay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ModuleNotFoundError as exc:
        hint = extras.explain_import_error(args.command, exc)
        if hint is None:
            raise
        print(f"spotrelay: {hint}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(f"spotrelay: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
