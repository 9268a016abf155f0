"""Turning what the attempts gave into what the client gets, and recording how it went.

A non-streaming :class:`Answer` or an :class:`ApiError` becomes one
:class:`ProxyResponse`; a started stream becomes a
:class:`~spotrelay.router.stream.relay.StreamRelay` body driven by the
request's stream handler (``ProxyRequest.handler``), which opens
continuations through the proxy's ``open_continuation`` and records breaks
through :meth:`Responses.on_break`. Every request ends with one metrics count
and (per ``server.access_log``) one access log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from spotrelay.core.logs import clip

from ..metrics import RouterMetrics
from ..registry.state import Registry
from ..retry import RetryBudget
from ..stream.disconnect import ClientLink
from ..stream.finish import FinishTracker, expected_choices
from ..stream.hedge import HedgeRace, Outcome, StallPolicy, race_lock
from ..stream.hedging import Hedger
from ..stream.relay import BreakReason, StreamBreak, StreamHandler, StreamRelay, StreamStart
from ..transport.upstream import Upstream
from .request import Answer, ApiError, ClientLeft, ProxyRequest, ProxyResponse

log = logging.getLogger("spotrelay.router")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Continuations(Protocol):
    """The proxy's ``open_continuation``: a stream's next upstream on an untried node."""

    def __call__(
        self,
        req: ProxyRequest,
        body: dict[str, Any],
        requires: frozenset[str],
        *,
        link: ClientLink | None = None,
    ) -> StreamStart: ...


class Responses:
    """Builds the client's responses; counts and logs each request once."""

    def __init__(
        self,
        *,
        registry: Registry,
        budget: RetryBudget,
        metrics: RouterMetrics,
        stall: StallPolicy,
        continuations: Continuations,
        access_log: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.budget = budget
        self.metrics = metrics
        self.stall = stall
        self.continuations = continuations
        self.access_log = access_log
        self.clock = clock

    def answer(self, req: ProxyRequest, result: Answer | ApiError) -> ProxyResponse:
        """The response for a non-streaming answer or a final error."""
        if isinstance(result, ClientLeft):
            self.metrics.client_disconnects.inc()
            return self.finish(req, self.error(req, result), outcome="client_disconnect")
        if isinstance(result, ApiError):
            return self.finish(req, self.error(req, result))
        headers = {"X-Request-ID": req.request_id, "X-Spotrelay-Node": result.node_id}
        headers.update(result.headers)
        response = ProxyResponse(result.status, result.body, result.content_type, headers)
        return self.finish(req, response, result.outcome)

    def error(self, req: ProxyRequest, err: ApiError) -> ProxyResponse:
        headers = {"X-Request-ID": req.request_id, **err.headers}
        return ProxyResponse(err.status, err.body(), "application/json", headers)

    # -- streams -------------------------------------------------------------------------

    def stream(
        self, req: ProxyRequest, start: StreamStart, handler: StreamHandler
    ) -> ProxyResponse:
        """The response relaying ``start`` (and its continuations) through ``handler``.

        The request's retry-budget share ends with the stream, not here.
        """
        self.metrics.ttft.observe(self.clock() - req.received)
        expected = expected_choices(req.path, req.doc)

        def on_finish(outcome: str) -> None:
            self.budget.end_request()
            if outcome == "client_disconnect":
                self.metrics.client_disconnects.inc()
            self.log_done(req, 200, outcome)

        relay = StreamRelay(
            start,
            handler,
            open_next=lambda body, requires: self.continuations(req, body, requires),
            on_break=lambda up, brk: self.on_break(req, up, brk),
            on_finish=on_finish,
            finishes=lambda: FinishTracker(expected),
            hedger=self._hedger(req, handler),
        )
        self.metrics.count_request(self.model_label(req), 200)
        headers = {
            "X-Request-ID": req.request_id,
            "X-Spotrelay-Node": start.upstream.node.id,
            **STREAM_HEADERS,
        }
        return ProxyResponse(200, relay, "text/event-stream; charset=utf-8", headers)

    def _hedger(self, req: ProxyRequest, handler: StreamHandler) -> Hedger | None:
        """Hedging for a stream whose handler can say what a continuation would be."""
        plan = getattr(handler, "hedge_plan", None)
        policy = self.stall
        if plan is None or not policy.enabled or policy.max_per_stream <= 0:
            return None
        race = HedgeRace(
            policy.max_per_stream, retry_s=policy.stall_floor_s, clock=self.clock, lock=race_lock()
        )

        def open_hedge(
            body: dict[str, Any], requires: frozenset[str], link: ClientLink
        ) -> StreamStart:
            return self.continuations(req, body, requires, link=link)

        return Hedger(
            race,
            plan,
            open_hedge,
            budget=self.budget,
            count=lambda outcome: self._count_hedge(req, outcome),
            client_sock=req.client.sock if req.client is not None else None,
            request_id=req.request_id,
        )

    def _count_hedge(self, req: ProxyRequest, outcome: Outcome) -> None:
        self.metrics.hedges.labels(str(outcome)).inc()
        req.trace.event("hedge", outcome=str(outcome))

    def on_break(self, req: ProxyRequest, upstream: Upstream, brk: StreamBreak) -> None:
        """The one place a stream break is recorded: metrics, passive health, log."""
        self.metrics.stream_breaks.labels(str(brk.reason)).inc()
        if brk.reason is not BreakReason.NODE_LOST:  # a lost node is out of rotation already
            self.registry.record_failure(upstream.node)
        req.trace.event("stream_break", node=brk.node_id, reason=str(brk.reason),
                        events_sent=brk.events_sent)  # fmt: skip
        log.warning(
            "stream broke on node %s after %d events: %s %s",
            brk.node_id,
            brk.events_sent,
            brk.reason,
            brk.detail,
            extra={"request_id": req.request_id},
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def finish(
        self, req: ProxyRequest, response: ProxyResponse, outcome: str = "complete"
    ) -> ProxyResponse:
        """Count and log a request answered with ``response``."""
        self.metrics.count_request(self.model_label(req), response.status)
        self.log_done(req, response.status, outcome)
        return response

    def model_label(self, req: ProxyRequest) -> str:
        """The metrics label: bounded model names; ``none`` for model-less requests (GETs)."""
        return self.metrics.model_label(req.model) if req.model else "none"

    def log_done(self, req: ProxyRequest, status: int, outcome: str) -> None:
        if self.access_log or status >= 500 or outcome != "complete":
            self._access_line(req, status, outcome)
        req.trace.end(status, outcome)

    def _access_line(self, req: ProxyRequest, status: int, outcome: str) -> None:
        log.info(
            "%s %s %d",
            req.method,
            req.path,
            status,
            extra={
                "request_id": req.request_id,
                "model": clip(req.model),
                "node": req.node_id,
                "attempts": req.attempts,
                "stream": req.stream,
                "outcome": outcome,
                "ms": round((self.clock() - req.received) * 1000, 1),
            },
        )
