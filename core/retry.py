"""Retry a call until it succeeds, a deadline passes or the tries run out.

One loop for every "keep trying, but not past this moment" in the project,
so each caller states only what to call, which errors are worth another
try, how long to wait between tries and when to stop. The clock and the
sleep are injected: tests run the loop without waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry_until(
    call: Callable[[], T],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    next_delay: Callable[[], float],
    until: float = math.inf,
    attempts: int | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``'s result; re-raises its last ``retry_on`` error when giving up.

    It gives up when ``attempts`` calls have failed, or when the next try
    would start after ``until`` (read on ``clock``): a wait that would end
    past the deadline is not started. ``on_retry(error, delay)`` runs before
    each wait, e.g. to log. Errors outside ``retry_on`` propagate at once.
    """
    failures = 0
    while True:
        try:
            return call()
        except retry_on as exc:
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            delay = next_delay()
            if clock() + delay > until:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
