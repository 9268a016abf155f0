"""When a failed attempt is retried, after how long, and how many retries the fleet can take.

Only failures *before the first response byte reaches the client* are retried
(afterwards the client has seen part of an answer: that is the stream-resume
seam in :mod:`spotrelay.router.proxy`). Retryable:

- connection refused / unreachable / connect timeout (nothing was sent);
- connection reset or closed without a (complete) response, first-byte
  timeout, an error event before any stream data (the node died or hung);
- upstream status 429, 500, 502, 503, 504.

Other 4xx are the client's problem and pass through unchanged.

Backoff is "full jitter" (:mod:`spotrelay.core.backoff`): a uniform delay in
``[0, min(cap, base · 2^(n-1))]`` before retry ``n``, which spreads a burst of
retries instead of synchronising them. A retry budget bounds the amplification
when a whole fleet is failing: concurrent retries may be at most
``budget_percent`` of the active requests, but ``min_retry_concurrency`` are
always allowed (Envoy's retry budget). A retry that finds the budget used up
waits for a slot (up to ``retry.budget_wait_s``) instead of failing at once:
when one node of three dies, a third of the open requests need a retry at the
same moment, and queueing them briefly keeps the fleet's extra load bounded
without turning a survivable node loss into client errors.
``budget_wait_s: 0`` gives Envoy's fail-fast behaviour. One overall deadline
per request bounds everything, waits included.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum

from spotrelay.core.backoff import Jitter, jittered_delay

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class FailureKind(StrEnum):
    CONNECT_ERROR = "connect_error"
    CONNECT_TIMEOUT = "connect_timeout"
    RESET = "reset"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    ERROR_EVENT = "error_event"
    STATUS = "status"
    LOOP = "loop"  # the node URL leads back to this router (or one it passed through)
    INTERNAL = "internal_error"  # the attempt raised something unforeseen (a router bug)
    BAD_RESPONSE = "bad_response"  # no client could use it: status 999, HTML for a stream...
    TOO_LARGE = "too_large"  # a body over routing.max_response_bytes (the same elsewhere)
    NODE_LOST = "node_lost"  # the router cut it: the node expired, left, hangs or froze


# Failures that say something about the node's health (429 is back-pressure, not sickness).
UNHEALTHY_STATUS = frozenset({500, 502, 503, 504})


@dataclass
class Failure:
    """One failed attempt, as the retry policy and the client error need it."""

    kind: FailureKind
    node_id: str
    detail: str = ""
    status: int | None = None  # for STATUS: the upstream's answer, kept to pass through
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After, to pass through

    @property
    def reason(self) -> str:
        """A short label for metrics and logs (``status_503``, ``reset``...)."""
        return f"status_{self.status}" if self.kind is FailureKind.STATUS else str(self.kind)

    @property
    def unhealthy(self) -> bool:
        """Does this failure count towards the node's passive-health ejection?"""
        if self.kind is FailureKind.STATUS:
            return self.status in UNHEALTHY_STATUS
        # A lost node is out of rotation already; a body too large would be so anywhere.
        # A loop is a configuration error, and a 508 is something anyone between here
        # and the router that answered it could send: never eject for it.
        return self.kind not in (FailureKind.NODE_LOST, FailureKind.TOO_LARGE, FailureKind.LOOP)

    @property
    def retryable(self) -> bool:
        if self.kind is FailureKind.STATUS:
            return self.status in RETRYABLE_STATUS
        return self.kind is not FailureKind.TOO_LARGE


class RetryPolicy:
    def __init__(
        self,
        max_attempts: int = 3,
        backoff_base_ms: float = 25,
        backoff_max_ms: float = 250,
        rng: random.Random | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.base_s = backoff_base_ms / 1000
        self.max_s = backoff_max_ms / 1000
        self.rng = rng or random.Random()

    def should_retry(self, failure: Failure, attempts_made: int) -> bool:
        return failure.retryable and attempts_made < self.max_attempts

    def backoff_s(self, retry_number: int) -> float:
        """Full-jitter delay before retry ``retry_number`` (1 for the first retry)."""
        return jittered_delay(retry_number - 1, self.base_s, self.max_s, Jitter.FULL, self.rng)


class RetryBudget:
    """Concurrent retries ≤ max(min_retry_concurrency, budget_percent % of active requests)."""

    def __init__(
        self, budget_percent: float = 20, min_retry_concurrency: int = 3, wait_s: float = 0
    ) -> None:
        self.fraction = budget_percent / 100
        self.min_concurrency = min_retry_concurrency
        self.wait_s = wait_s
        self.active_requests = 0
        self.active_retries = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        # Retries waiting for a slot. Notifying a Condition nobody waits on still
        # costs a lock round trip (gevent's Python-level lock): every request
        # starts here, so only a waiter is notified.
        self._waiting = 0

    def start_request(self) -> None:
        with self._lock:
            self.active_requests += 1
            if self._waiting:
                self._freed.notify()  # the limit may have grown

    def end_request(self) -> None:
        with self._lock:
            self.active_requests -= 1

    def limit(self) -> int:
        return max(self.min_concurrency, int(self.active_requests * self.fraction))

    def try_acquire(self) -> bool:
        """Take a retry slot if the budget allows; pair with :meth:`release`."""
        with self._lock:
            if self.active_retries >= self.limit():
                return False
            self.active_retries += 1
            return True

    def acquire(self, max_wait_s: float | None = None) -> bool:
        """Take a retry slot, waiting up to ``wait_s`` (and ``max_wait_s``) for one."""
        if self.try_acquire():
            return True
        wait = self.wait_s if max_wait_s is None else min(self.wait_s, max_wait_s)
        if wait <= 0:
            return False
        deadline = time.monotonic() + wait
        with self._freed:
            self._waiting += 1
            try:
                while self.active_retries >= self.limit():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._freed.wait(remaining)
            finally:
                self._waiting -= 1
            self.active_retries += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active_retries -= 1
            if self._waiting:
                self._freed.notify()
