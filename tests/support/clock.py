"""A clock the test moves by hand, for the I/O-free cores that take an injected clock."""

from __future__ import annotations


class Clock:
    """Calling it gives the time; the test moves it by setting ``now``, :meth:`advance` or
    :meth:`sleep` (pass ``clock.sleep`` where the code under test sleeps: it returns at once,
    moves the clock and records the delay in ``slept``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
