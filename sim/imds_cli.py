"""CLI for IMDS emulator (placeholder until it lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("imds", parents=[common], help="IMDS emulator: not built yet")
    p.set_defaults(handler=lambda args: print("not built yet") or 1)
