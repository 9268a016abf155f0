"""``core.retry.retry_until`` with a hand-moved clock: no test waits."""

from __future__ import annotations

import pytest

from spotrelay.core.retry import retry_until
from tests.support.clock import Clock


class Flaky:
    """Fails ``failures`` times with ``error`` (default ``ConnectionError``), then answers."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionError("down")
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_retries_until_the_call_succeeds() -> None:
    clock, call, retried = Clock(100.0), Flaky(3), []
    result = retry_until(
        call,
        retry_on=ConnectionError,
        next_delay=lambda: 1.0,
        until=110.0,
        on_retry=lambda exc, delay: retried.append((str(exc), delay)),
        clock=clock,
        sleep=clock.sleep,
    )
    assert result == "ok" and call.calls == 4
    assert clock.slept == [1.0, 1.0, 1.0]
    assert retried == [("down", 1.0)] * 3


def test_never_waits_past_the_deadline() -> None:
    clock, call = Clock(100.0), Flaky(100)
    delays = iter([1.0, 2.0, 4.0, 8.0])
    with pytest.raises(ConnectionError):
        retry_until(
            call,
            retry_on=ConnectionError,
            next_delay=lambda: next(delays),
            until=108.0,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.slept == [1.0, 2.0, 4.0]  # the next 8 s would end at 115 > 108
    assert call.calls == 4 and clock.now <= 108.0


def test_gives_up_after_the_tries_and_passes_other_errors_at_once() -> None:
    clock, call = Clock(100.0), Flaky(100)
    with pytest.raises(ConnectionError):
        retry_until(
            call,
            retry_on=ConnectionError,
            next_delay=lambda: 0.5,
            attempts=3,
            clock=clock,
            sleep=clock.sleep,
        )
    assert call.calls == 3 and clock.slept == [0.5, 0.5]
    bug = Flaky(1, ValueError("bug"))
    with pytest.raises(ValueError):
        retry_until(bug, retry_on=ConnectionError, next_delay=lambda: 0.5, sleep=clock.sleep)
    assert bug.calls == 1
