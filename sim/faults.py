"""Fault injection state for the simulator: what goes wrong, and for how long.

One :class:`Faults` object per process, changed by command-line flags at start
and by ``POST /_control/faults`` at run time. The server asks it one question
per request (``decide``) and gets back what to do; counted faults
(``error_count``, ``drop_count``) are consumed there, so "the next N requests"
is exact even under concurrency (one event loop, no awaits in between).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

KEYS = (
    "drop_after_tokens",
    "drop_count",
    "hang",
    "stall",
    "error_status",
    "error_count",
    "unhealthy_for_s",
    "exit",
)


class FaultError(ValueError):
    """A bad fault specification (becomes a 400 on the control API)."""


@dataclass(frozen=True)
class Decision:
    """What to do with one /v1/* request."""

    unhealthy: bool = False
    hang: bool = False
    error_status: int | None = None
    drop_after_tokens: int | None = None


def _int(key: str, value: Any, lo: int, hi: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultError(f"{key} must be an integer or null")
    if value < lo or (hi is not None and value > hi):
        raise FaultError(f"{key} must be between {lo} and {hi}" if hi else f"{key} must be >= {lo}")
    return value


@dataclass
class Counted:
    """A fault for the next ``count`` requests (``count`` None: every request until reset)."""

    value: int | None = None
    count: int | None = None

    def update(
        self, spec: dict[str, Any], new: dict[str, int | None], key: str, count_key: str
    ) -> None:
        """Take ``key`` and ``count_key`` from ``spec`` (their checked values in ``new``).

        A fault set again without a count applies to every request; no fault, no count.
        """
        if key in spec:
            self.value = new[key]
            if count_key not in spec:
                self.count = None
        if count_key in spec:
            self.count = new[count_key]
        if self.value is None:
            self.count = None

    def take(self) -> int | None:
        """The fault for one request (None: none), counting it down."""
        value = self.value
        if value is not None and self.count is not None:
            self.count -= 1
            if self.count <= 0:
                self.value = self.count = None
        return value


class Faults:
    """Current faults. ``changed`` is pulsed on every update so hung requests can re-check."""

    def __init__(self) -> None:
        self.drop = Counted()  # drop_after_tokens, drop_count
        self.hang = False
        self.stall = False  # a hung GPU: running requests get no token, HTTP still answers
        self.error = Counted()  # error_status, error_count
        self.unhealthy_until = 0.0  # time.monotonic() deadline
        self._changed = asyncio.Event()

    # -- changes ------------------------------------------------------------

    def update(self, spec: dict[str, Any]) -> bool:
        """Merge ``spec`` (keys of :data:`KEYS`; null clears one); returns ``exit``.

        Validates everything before changing anything.
        """
        new = self._checked(spec)
        self.drop.update(spec, new, "drop_after_tokens", "drop_count")
        self.error.update(spec, new, "error_status", "error_count")
        if "hang" in spec:
            self.hang = bool(spec["hang"])
        if "stall" in spec:
            self.stall = bool(spec["stall"])
        if "unhealthy_for_s" in spec:
            self.unhealthy_until = time.monotonic() + float(spec["unhealthy_for_s"] or 0)
        self._pulse()
        return bool(spec.get("exit"))

    def _checked(self, spec: Any) -> dict[str, int | None]:
        """The counted faults' new values; raises :class:`FaultError` on any bad key or value."""
        if not isinstance(spec, dict):
            raise FaultError("the body must be a JSON object")
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise FaultError(
                f"unknown fault key(s): {', '.join(unknown)}; known: {', '.join(KEYS)}"
            )
        new = {
            "drop_after_tokens": _int("drop_after_tokens", spec.get("drop_after_tokens"), 0),
            "drop_count": _int("drop_count", spec.get("drop_count"), 1),
            "error_status": _int("error_status", spec.get("error_status"), 400, 599),
            "error_count": _int("error_count", spec.get("error_count"), 1),
        }
        for key in ("hang", "stall", "exit"):
            if spec.get(key) is not None and not isinstance(spec[key], bool):
                raise FaultError(f"{key} must be true or false")
        unhealthy = spec.get("unhealthy_for_s")
        if unhealthy is not None and (
            isinstance(unhealthy, bool) or not isinstance(unhealthy, int | float) or unhealthy < 0
        ):
            raise FaultError("unhealthy_for_s must be a number >= 0 or null")
        # A count limits a fault: it needs the fault, given now or already in force.
        for fault, count, current in (
            ("error_status", "error_count", self.error),
            ("drop_after_tokens", "drop_count", self.drop),
        ):
            if (
                count in spec
                and new[count] is not None
                and new[fault] is None
                and current.value is None
            ):
                raise FaultError(f"{count} needs {fault}")
        return new

    def reset(self) -> None:
        self.drop = Counted()
        self.error = Counted()
        self.hang = False
        self.stall = False
        self.unhealthy_until = 0.0
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # -- questions ----------------------------------------------------------

    def unhealthy(self) -> bool:
        return time.monotonic() < self.unhealthy_until

    def decide(self, generates: bool) -> Decision:
        """The fault for one /v1/* request (consumes counted faults).

        ``generates`` is true for completions, chat and embeddings: only those
        are subject to ``drop_after_tokens``.
        """
        if self.unhealthy():
            return Decision(unhealthy=True)
        if self.hang:
            return Decision(hang=True)
        if self.error.value is not None:
            return Decision(error_status=self.error.take())
        if generates and self.drop.value is not None:
            return Decision(drop_after_tokens=self.drop.take())
        return Decision()

    def state(self) -> dict[str, Any]:
        """The current faults as JSON (what the control API answers)."""
        remaining = self.unhealthy_until - time.monotonic()
        return {
            "drop_after_tokens": self.drop.value,
            "drop_count": self.drop.count,
            "hang": self.hang,
            "stall": self.stall,
            "error_status": self.error.value,
            "error_count": self.error.count,
            "unhealthy_for_s": round(remaining, 3) if remaining > 0 else None,
        }
