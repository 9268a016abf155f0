"""CLI wiring for ``spotrelay sim vllm``, ``spotrelay sim imds`` and ``spotrelay demo``."""

from __future__ import annotations

import argparse

from . import demo_cli, imds_cli, vllm_cli


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sim = sub.add_parser(
        "sim",
        help="local stand-ins: vLLM-API simulator, IMDS emulator",
        description="Local stand-ins for vLLM and the EC2 metadata service.",
    )
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="what", required=True)
    vllm_cli.register(sim_sub, common)
    imds_cli.register(sim_sub, common)
    demo_cli.register(sub, common)
