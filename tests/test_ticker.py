"""The one background loop every periodic job of the router and the agent runs on."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from spotrelay.core.ticker import Every, Ticker
from spotrelay.sim.loopback import wait_until


class FlakyTicker(Ticker):
    name = "flaky"

    def __init__(self) -> None:
        super().__init__(0.01)
        self.calls = 0

    def tick(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("a bug in one pass")


def test_a_failing_pass_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ticker = FlakyTicker()
    with caplog.at_level(logging.ERROR, logger=__name__):
        ticker.start()
        ticker.start()  # once only
        try:
            wait_until(lambda: ticker.calls >= 5, timeout=5, what="ticks after the failure")
        finally:
            ticker.stop()
    # Logged under the job's own module, so the failure reads as the job's.
    assert [r.name for r in caplog.records] == [__name__]
    assert "flaky pass failed" in caplog.text and "a bug in one pass" in caplog.text
    assert [t.name for t in threading.enumerate()].count("flaky") <= 1  # started once
    ticker.join(2)
    assert not ticker.is_alive()  # stop() ends the loop


def test_wake_runs_a_pass_now_and_stop_cuts_a_long_wait_short() -> None:
    calls: list[float] = []
    ticker = Every(3600, lambda: calls.append(time.monotonic()), immediate=True, name="slow")
    ticker.start()
    try:
        wait_until(lambda: len(calls) == 1, timeout=5, what="the immediate first pass")
        ticker.wake()
        wait_until(lambda: len(calls) == 2, timeout=5, what="the pass wake() asked for")
    finally:
        ticker.stop()
    ticker.join(5)
    assert not ticker.is_alive()  # not after the hour-long wait
    assert len(calls) == 2


def test_a_pass_sets_the_next_wait_and_a_shared_stop_ends_every_loop() -> None:
    stop = threading.Event()
    fast: list[int] = []
    # tick_s is an hour, but each pass asks for 10 ms: the returned wait wins.
    backoff = Every(3600, lambda: fast.append(1) or 0.01, stop=stop, immediate=True)
    idle = Every(3600, lambda: None, stop=stop)
    backoff.start()
    idle.start()
    wait_until(lambda: len(fast) >= 5, timeout=5, what="passes at the returned wait")
    backoff.stop()  # the shared event: the other loop ends too once its wait is cut short
    idle.wake()
    for ticker in (backoff, idle):
        ticker.join(5)
        assert not ticker.is_alive()
