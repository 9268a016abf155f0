"""Jittered exponential backoff: failing calls slow down without synchronising.

Shared by the agent (IMDS polls, router calls) and the router (Redis reconnects).
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``base * 2**n`` capped at ``cap``, with "equal jitter" (half fixed, half random).

    Half the delay is kept so a failing dependency is never hammered; the
    random half keeps many agents (a whole fleet after an IMDS hiccup) from
    retrying in lockstep. :meth:`reset` after a success.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = max(base, 0.001)
        self.cap = max(cap, self.base)
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next try."""
        exp = min(self.cap, self.base * (2.0 ** min(self.failures, 30)))
        self.failures += 1
        return exp / 2 + self._rng.uniform(0, exp / 2)

    def reset(self) -> None:
        self.failures = 0
