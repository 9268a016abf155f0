"""Checks of the IMDS emulator's control bodies (``POST /_control/<action>``).

Every action validates its whole body before it changes anything, and a bad
key or value is answered with a message naming it: a test that mistypes a
key must fail loudly, not run without its event.
"""

from __future__ import annotations

import math
from typing import Any


class ControlError(ValueError):
    """A bad control request; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def only(body: dict[str, Any], *allowed: str) -> None:
    """Refuse any key but ``allowed``."""
    for key in body:
        if key not in allowed:
            shown = ", ".join(allowed) if allowed else "none"
            raise ControlError(f"unknown key '{key}' (allowed: {shown})")


def choice(body: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(key, default)
    if value not in choices:
        raise ControlError(f"'{key}' must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def float_value(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """:func:`number` with a default and no null: always a number."""
    value = number(body, key, default, low, high)
    assert value is not None
    return value


def number(
    body: dict[str, Any],
    key: str,
    default: float | None,
    low: float,
    high: float,
    *,
    nullable: bool = False,
) -> float | None:
    value = body.get(key, default)
    if value is None:
        if key in body and not nullable and default is not None:
            raise ControlError(f"'{key}' must be a number; got null")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ControlError(f"'{key}' must be a number; got {value!r}")
    if not low <= value <= high:
        raise ControlError(f"'{key}' must be between {low:g} and {high:g}; got {value!r}")
    return float(value)
