"""Jittered exponential backoff: failing calls slow down without synchronising.

The one backoff of the project: the agent (IMDS polls, router calls, self-heal),
the router's Redis reconnects and the router's request retries. The jitter is
a parameter because the two kinds of caller want different things:

- **equal jitter** (half the delay fixed, half random) for a loop retrying one
  failing dependency: the fixed half keeps it from being hammered, the random
  half keeps a fleet from retrying in lockstep (:class:`Backoff`'s default);
- **full jitter** (uniform over the whole delay) for request retries, where a
  burst of retries should spread out and a fast first retry is worth having.
"""

from __future__ import annotations

import random
from enum import StrEnum


class Jitter(StrEnum):
    EQUAL = "equal"  # delay/2 + uniform(0, delay/2)
    FULL = "full"  # uniform(0, delay)


def jittered_delay(
    failures: int, base: float, cap: float, jitter: Jitter, rng: random.Random
) -> float:
    """The wait after ``failures`` failures before it (0 for the first retry):
    ``min(cap, base * 2**failures)``, jittered."""
    exp = min(cap, base * (2 ** min(max(failures, 0), 30)))
    if jitter is Jitter.FULL:
        return rng.uniform(0, exp)
    return exp / 2 + rng.uniform(0, exp / 2)


class Backoff:
    """Delays ``base * 2**n`` capped at ``cap``, counting failures.

    :meth:`reset` after a success.
    """

    def __init__(
        self,
        base: float,
        cap: float,
        rng: random.Random | None = None,
        jitter: Jitter = Jitter.EQUAL,
    ) -> None:
        self.base = max(base, 0.001)
        self.cap = max(cap, self.base)
        self.jitter = jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next try."""
        delay = jittered_delay(self.failures, self.base, self.cap, self.jitter, self._rng)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
