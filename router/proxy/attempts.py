"""The attempt loop: failover before the first byte, within the retry policy and budget.

:meth:`Attempts.acquire` picks a node (:mod:`.choice`), tries it
(:mod:`.attempt`), and on a retryable failure (see
:mod:`spotrelay.router.retry`) tries a *different* node after a jittered
backoff, within the attempt limit, the retry budget and the request
deadline. When no node is routable it waits up to
``routing.no_capacity_wait_s`` for one (then 503 + ``Retry-After``). The
last failure becomes the client's error (:meth:`Attempts.give_up`).

Requests for state one node holds (a stored Responses API response) go
through :meth:`Attempts.ask_each_node` instead: every ready node in turn
until one knows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..metrics import RouterMetrics
from ..registry.node import Node
from ..registry.state import Registry
from ..retry import Failure, FailureKind, RetryBudget, RetryPolicy
from ..settings import Routing
from ..stream.relay import StreamStart
from ..transport.loopmark import LOOP_HEADER
from .attempt import NodeAttempt
from .choice import NodeChoice
from .request import Answer, ApiError, ClientLeft, ProxyRequest

log = logging.getLogger("spotrelay.router")

Outcome = Answer | StreamStart | ApiError


class Attempts:
    """Attempts on successive nodes until an answer, a stream start or a final error."""

    def __init__(
        self,
        *,
        choice: NodeChoice,
        attempt: NodeAttempt,
        registry: Registry,
        policy: RetryPolicy,
        budget: RetryBudget,
        metrics: RouterMetrics,
        routing: Routing,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.choice = choice
        self.attempt = attempt
        self.registry = registry
        self.policy = policy
        self.budget = budget
        self.metrics = metrics
        self.routing = routing
        self.clock = clock
        self.sleep = sleep

    def acquire(self, req: ProxyRequest) -> Outcome:
        """Attempts on successive nodes until an answer, a stream start, or a final error.

        Call it with a request whose ``tried`` holds the nodes to avoid (a stream
        continuation). Never raises for upstream trouble.
        """
        last: Failure | None = None
        slot = False  # a retry budget slot, held until the retry's attempt is over
        try:
            while True:
                node = self._next_node(req, last)
                if not isinstance(node, Node):
                    return node
                req.attempts += 1
                req.tried.add(node.id)
                result = self.attempt.run(node, req)
                if slot:
                    self.budget.release()
                    slot = False
                if not isinstance(result, Failure):
                    self._succeeded(node, req)
                    return result
                if req.client is not None and req.client.gone:
                    return ClientLeft()  # the watch aborted the attempt: not the node's fault
                last = result
                self._count_failure(node, req, result)
                if not self._may_retry(req, result):
                    return self.give_up(req, last)
                slot = True
                self._back_off(req, result)
        finally:
            if slot:
                self.budget.release()

    def _next_node(self, req: ProxyRequest, last: Failure | None) -> Node | Answer | ApiError:
        """The node for the next attempt, or the request's final answer when there is none."""
        if req.attempts and req.client is not None and req.client.check():
            return ClientLeft()  # left during the backoff (the watch covers attempts)
        if self.clock() >= req.deadline:
            return self.deadline_error(req, last)
        node = self.choice.choose(req, retrying=last is not None)
        if req.client is not None and req.client.gone:
            return ClientLeft()  # left during a capacity wait
        if node is None:
            return self.give_up(req, last)
        return node

    def _may_retry(self, req: ProxyRequest, failure: Failure) -> bool:
        """The retry policy allows another attempt and the budget a slot (held on True)."""
        if not self.policy.should_retry(failure, req.attempts):
            return False
        if not self.budget.acquire(req.deadline - self.clock()):
            self.metrics.budget_exhausted.inc()
            log.warning(
                "retry budget exhausted; not retrying",
                extra={"request_id": req.request_id, "reason": failure.reason},
            )
            return False
        return True

    def _back_off(self, req: ProxyRequest, failure: Failure) -> None:
        self.metrics.retries.labels(failure.reason).inc()
        delay = min(self.policy.backoff_s(req.attempts), req.deadline - self.clock())
        if delay > 0:
            self.sleep(delay)

    def ask_each_node(self, req: ProxyRequest) -> Outcome:
        """For state that lives on one unknown node (a stored response): each ready node
        in turn until one answers something else than 404; a node that fails is skipped.

        No retry budget or backoff: every attempt goes to a different node.
        """
        not_found: Answer | None = None
        failed: Failure | None = None
        for node in self.choice.candidates(req):
            if self.clock() >= req.deadline:
                return self.deadline_error(req, failed)
            req.attempts += 1
            req.tried.add(node.id)
            result = self.attempt.run(node, req)
            if isinstance(result, Failure):
                if req.client is not None and req.client.gone:
                    return ClientLeft()  # the watch aborted the attempt: not the node's fault
                self._count_failure(node, req, result)
                failed = result
                continue
            self.registry.record_success(node)
            req.node_id = node.id
            if isinstance(result, StreamStart) or result.status != 404:
                return result
            not_found = result
        if failed is None and not_found is not None:
            return not_found  # every node was asked: none knows it
        return self.give_up(req, failed)  # a node that failed may hold it

    # -- outcomes ------------------------------------------------------------------------

    def _succeeded(self, node: Node, req: ProxyRequest) -> None:
        self.metrics.attempt_ok()
        self.registry.record_success(node)
        req.node_id = node.id

    def _count_failure(self, node: Node, req: ProxyRequest, failure: Failure) -> None:
        self.metrics.attempts.labels(failure.reason).inc()
        ejected = self.registry.record_failure(node) if failure.unhealthy else False
        log.warning(
            "attempt failed on node %s: %s %s",
            node.id,
            failure.reason,
            failure.detail,
            extra={"request_id": req.request_id, "attempt": req.attempts},
        )
        if ejected:
            log.warning(
                "node %s ejected after %d consecutive failures",
                node.id,
                self.registry.outliers.of(node).consecutive_failures,
                extra={"request_id": req.request_id},
            )

    def give_up(self, req: ProxyRequest, last: Failure | None) -> Answer | ApiError:
        """The client's answer when no attempt is left: the last failure, as the client
        should see it (a retryable status passes through)."""
        if last is None:
            return ApiError(
                503,
                f"no other node serves {req.wanted()}",
                code="no_capacity",
                headers={"Retry-After": str(self.routing.retry_after_s)},
            )
        if last.kind is FailureKind.STATUS and last.status is not None:
            return Answer(
                last.status,
                last.body,
                last.content_type or "application/json",
                last.node_id,
                dict(last.headers),
            )
        return _failed(req, last)

    def deadline_error(self, req: ProxyRequest, last: Failure | None) -> ApiError:
        tries = f" after {req.attempts} attempt(s), last: {last.reason}" if last else ""
        return ApiError(504, f"request deadline exceeded{tries}", code="deadline_exceeded")


def _failed(req: ProxyRequest, last: Failure) -> ApiError:
    """The error for a request whose last attempt failed without an answer to pass on."""
    tries = f"{req.attempts} attempt{'s' if req.attempts != 1 else ''}"
    if last.kind is FailureKind.LOOP:  # tell the router before us too: it is in the loop
        return ApiError(
            508,
            "request loop: a registered node URL points back at a spotrelay router",
            code="loop_detected",
            headers={LOOP_HEADER: "1"},
        )
    if last.kind is FailureKind.FIRST_BYTE_TIMEOUT:
        return ApiError(504, f"upstream timed out ({tries})", code="upstream_timeout")
    if last.kind is FailureKind.TOO_LARGE:
        return ApiError(502, last.detail, code="upstream_response_too_large")
    if last.kind is FailureKind.BAD_RESPONSE:
        message = f"upstream answer unusable: {last.detail} ({tries})"
        return ApiError(502, message, code="bad_upstream_response")
    return ApiError(502, f"upstream failed: {last.reason} ({tries})", code="upstream_error")
