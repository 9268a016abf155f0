"""CLI for the router component (placeholder until the component lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    for name in ["router"]:
        p = sub.add_parser(name, parents=[common], help="router: not built yet")
        p.set_defaults(handler=lambda args: print("not built yet") or 1)
