"""Command-line flags that override configuration keys, declared once in a table.

A component's CLI lists its flags as ``{dest: Flag("section.key", help)}``;
:func:`add_flags` puts them on the parser and :func:`overrides` turns the parsed
values into the nested mapping :func:`spotrelay.core.config.load` takes. One
table means a flag cannot be added to the parser and forgotten in the
overrides, or mapped onto the wrong key. Every flag defaults to ``None`` (not
given), which leaves the key to the YAML file, the environment and the
schema's default, in that order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Flag:
    """``--<dest>`` (underscores as dashes, plus ``aliases``) overriding ``key``."""

    key: str  # "section.key", or "key" for a top-level one
    help: str
    type: Callable[[str], Any] | None = None
    choices: Sequence[Any] | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = ()
    switch: bool = False  # takes no value: given means True


def add_flags(parser: argparse._ActionsContainer, flags: Mapping[str, Flag]) -> None:
    """Add every flag of the table to ``parser`` (or an argument group of it)."""
    for dest, flag in flags.items():
        options: dict[str, Any] = {"dest": dest, "default": None, "help": flag.help}
        if flag.switch:
            options["action"] = "store_true"
        for name in ("type", "choices", "metavar"):
            if getattr(flag, name) is not None:
                options[name] = getattr(flag, name)
        parser.add_argument("--" + dest.replace("_", "-"), *flag.aliases, **options)


def overrides(args: argparse.Namespace, flags: Mapping[str, Flag]) -> dict[str, Any]:
    """The flags' values, nested like the YAML, for ``load(..., overrides=...)``."""
    out: dict[str, Any] = {}
    for dest, flag in flags.items():
        section, _, key = flag.key.rpartition(".")
        (out.setdefault(section, {}) if section else out)[key] = getattr(args, dest, None)
    return out
