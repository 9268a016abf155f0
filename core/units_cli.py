"""The ``install-unit`` action shared by ``spotrelay agent`` and ``spotrelay router``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_install_unit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="install-unit: install under DIR instead of / (a staging tree or image build)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="install-unit: also replace an existing /etc/spotrelay/*.yaml",
    )


def install_unit(role: str, args: argparse.Namespace) -> int:
    from .units import install_units

    for line in install_units(role, Path(args.root), force=args.force):
        print(line)
    return 0
