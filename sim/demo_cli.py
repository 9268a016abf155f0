"""CLI for the demo (placeholder until it lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="the demo: not built yet")
    p.set_defaults(handler=lambda args: print("not built yet") or 1)
