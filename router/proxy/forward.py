"""Forwarding one data-plane request to a node, with failover before the first byte.

:meth:`Proxy.forward` takes a parsed :class:`ProxyRequest` and returns a
:class:`ProxyResponse` for the web layer to send:

1. unknown model (no registered node ever served it) → 404;
2. a stream request gets its handler from the proxy's one factory
   (``stream_handler_factory``), which picks it by the request's stream
   kind: resume (or end with an error event) for chat and completions, the
   protocol's own for named-event streams (Responses, Anthropic);
3. :class:`~.attempts.Attempts` finds a node and fails over to another
   before the first byte reaches the client (:mod:`.attempts`, :mod:`.choice`,
   one attempt in :mod:`.attempt`). The request deadline covers the head and
   the whole non-streaming body, and a stream until its first output;
4. :class:`~.responses.Responses` turns the outcome into the response: a
   non-streaming answer or error as is, a stream through
   :class:`spotrelay.router.stream.relay.StreamRelay`, which asks the
   handler what to do about a break and opens continuations through
   :meth:`Proxy.open_continuation`. A non-streaming request asked as a
   stream (``routing.assemble_non_streaming``) is read to its end by
   :mod:`spotrelay.router.stream.assembly` first.

Every upstream call carries the request's ``X-Request-ID``; every log line
about the request names it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from spotrelay.core.logs import clip

from ..metrics import RouterMetrics
from ..registry.balancer import Balancer
from ..registry.node import ModelStatus
from ..registry.state import Registry
from ..retry import RetryBudget, RetryPolicy
from ..settings import Routing, Timeouts
from ..stream.disconnect import ClientLink, ClientWatch
from ..stream.hedge import StallPolicy
from ..stream.named_events import by_stream_kind
from ..stream.relay import ContinuationRejected, EndWithError, StreamHandler, StreamStart
from ..transport.loopmark import LoopMarks
from ..transport.pools import NodePools
from ..transport.upstream import IdleWatchdog
from .attempt import NodeAttempt
from .attempts import Attempts, Outcome
from .choice import NodeChoice
from .request import Answer, ApiError, ProxyRequest, ProxyResponse
from .responses import Responses

log = logging.getLogger("spotrelay.router")

HandlerFactory = Callable[[ProxyRequest, "Proxy"], StreamHandler]
Assembler = Callable[["Proxy", ProxyRequest, StreamStart], Answer | ApiError]


class Proxy:
    """Routes, retries and relays; see the module docstring."""

    def __init__(
        self,
        *,
        registry: Registry,
        pools: NodePools,
        balancer: Balancer,
        policy: RetryPolicy,
        budget: RetryBudget,
        metrics: RouterMetrics,
        timeouts: Timeouts,
        routing: Routing,
        access_log: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        stream_handler_factory: HandlerFactory | None = None,
        watchdog: IdleWatchdog | None = None,
        loop_marks: LoopMarks | None = None,
        client_watch: ClientWatch | None = None,
        assembled: Assembler | None = None,
        stall: StallPolicy | None = None,
    ) -> None:
        self.loop_marks = loop_marks if loop_marks is not None else LoopMarks()
        self.client_watch = client_watch if client_watch is not None else ClientWatch()
        self.registry = registry
        self.policy = policy
        self.budget = budget
        self.metrics = metrics
        self.clock = clock
        # Every stream's handler: the request's stream kind picks it (``chat`` is
        # the one for chat and completions streams).
        chat = stream_handler_factory or (lambda req, proxy: EndWithError())
        self.stream_handler_factory: HandlerFactory = by_stream_kind(chat)
        # Reads a stream to its end for a non-streaming request (req.assembly).
        self.assembled = assembled
        stall = stall or StallPolicy()
        self.attempts = self._attempt_loop(
            pools,
            balancer,
            policy,
            timeouts,
            routing,
            stall,
            watchdog,
            sleep,
            assembles=assembled is not None,
        )
        self.responses = Responses(
            registry=registry,
            budget=budget,
            metrics=metrics,
            stall=stall,
            continuations=self.open_continuation,
            access_log=access_log,
            clock=clock,
        )
        self.acquire = self.attempts.acquire
        self.on_break = self.responses.on_break  # a break of a stream read for assembly too

    def _attempt_loop(
        self,
        pools: NodePools,
        balancer: Balancer,
        policy: RetryPolicy,
        timeouts: Timeouts,
        routing: Routing,
        stall: StallPolicy,
        watchdog: IdleWatchdog | None,
        sleep: Callable[[float], None],
        *,
        assembles: bool,
    ) -> Attempts:
        registry, metrics, clock = self.registry, self.metrics, self.clock
        attempt = NodeAttempt(
            registry=registry,
            pools=pools,
            metrics=metrics,
            timeouts=timeouts,
            routing=routing,
            loop_marks=self.loop_marks,
            client_watch=self.client_watch,
            stall=stall,
            watchdog=watchdog,
            assembles=assembles,
            clock=clock,
        )
        return Attempts(
            choice=NodeChoice(registry, balancer, routing, metrics, clock),
            attempt=attempt,
            registry=registry,
            policy=policy,
            budget=self.budget,
            metrics=metrics,
            routing=routing,
            clock=clock,
            sleep=sleep,
        )

    def forward(self, req: ProxyRequest) -> ProxyResponse:
        if req.model and self.registry.model_status(req.model) is ModelStatus.UNKNOWN:
            err = ApiError(
                404,
                f"model {clip(req.model)!r} is not served by any registered node",
                param="model",
                code="model_not_found",
            )
            return self.responses.finish(req, self.responses.error(req, err))
        self.budget.start_request()
        try:
            result = self._outcome(req)
        except BaseException:
            self.budget.end_request()
            raise
        if isinstance(result, StreamStart):  # the stream ends the request's budget share
            handler = req.handler or self.stream_handler_factory(req, self)
            return self.responses.stream(req, result, handler)
        self.budget.end_request()
        return self.responses.answer(req, result)

    def _outcome(self, req: ProxyRequest) -> Outcome:
        """What the attempts gave: an answer, a stream to relay, or an error."""
        if req.stream:
            req.handler = self.stream_handler_factory(req, self)
        result = self.attempts.ask_each_node(req) if req.ask_each else self.acquire(req)
        if isinstance(result, StreamStart) and not req.stream and self.assembled is not None:
            # A non-streaming request asked as a stream (see NodeAttempt): read it all.
            return self.assembled(self, req, result)
        return result

    def open_continuation(
        self,
        req: ProxyRequest,
        body: dict[str, Any],
        requires: frozenset[str],
        *,
        link: ClientLink | None = None,
    ) -> StreamStart:
        """Open a stream's continuation on a node ``req`` has not tried yet.

        Raises :class:`ContinuationRejected` when trying again is pointless (no
        node serving the model has ever reported the ``requires`` capabilities,
        no capacity within the wait, the deadline passed, a 4xx),
        ``RuntimeError`` otherwise. Where capable nodes served the model before
        but none is routable now (the broken node was the last one), the
        continuation waits for one like a new request waits for capacity.
        """
        if requires and not self.registry.has_had_capabilities(req.model, requires):
            raise ContinuationRejected(
                f"no node serving model {clip(req.model)!r} reports {', '.join(sorted(requires))}",
                outcome="not_resumable",
            )
        sub = req.derive(body, requires=requires)
        if link is not None:  # a hedge: the hedger cancels it through its link
            sub.client = link
            sub.trace = req.trace.hedged()
        result = self.acquire(sub)
        if link is None or isinstance(result, StreamStart):  # a hedge that lost leaves no trace
            req.tried |= sub.tried
        if isinstance(result, StreamStart):
            log.info(
                "continuing the stream on node %s",
                result.upstream.node.id,
                extra={"request_id": req.request_id},
            )
            return result
        if isinstance(result, ApiError):
            if result.code in ("no_capacity", "deadline_exceeded"):
                # It waited for capacity already, or no time is left: trying again is pointless.
                raise ContinuationRejected(result.message, outcome=result.code)
            raise RuntimeError(f"no node for the continuation: {result.message}")
        message = f"node {result.node_id} answered {result.message()}"
        if 400 <= result.status < 500 and result.status not in (408, 429):
            raise ContinuationRejected(message)
        raise RuntimeError(message)
