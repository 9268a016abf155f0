"""The one background loop every router upkeep job runs on."""

from __future__ import annotations

import logging
import threading

import pytest

from spotrelay.core.net import wait_until
from spotrelay.router.ticker import Ticker


class Flaky(Ticker):
    name = "flaky"

    def __init__(self) -> None:
        super().__init__(0.01)
        self.calls = 0

    def tick(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("a bug in one pass")


def test_a_failing_pass_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ticker = Flaky()
    with caplog.at_level(logging.ERROR, logger="spotrelay.router"):
        ticker.start()
        ticker.start()  # once only
        try:
            wait_until(lambda: ticker.calls >= 5, timeout=5, what="ticks after the failure")
        finally:
            ticker.stop()
    assert "flaky pass failed" in caplog.text and "a bug in one pass" in caplog.text
    assert [t.name for t in threading.enumerate()].count("flaky") <= 1  # started once
    ticker._thread.join(2)
    assert not ticker._thread.is_alive()  # stop() ends the loop
