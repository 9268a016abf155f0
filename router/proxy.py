"""Forwarding one data-plane request to a node, with failover before the first byte.

:meth:`Proxy.forward` takes a parsed :class:`ProxyRequest` and returns a
:class:`ProxyResponse` for the web layer to send:

1. unknown model (no registered node ever served it) → 404;
2. :meth:`Proxy.acquire` picks a node (balancer), sends the request, and on
   a retryable failure (see :mod:`spotrelay.router.retry`) tries a
   *different* node after a jittered backoff, within the attempt limit, the
   retry budget and the request deadline. When no node is routable it waits
   up to ``routing.no_capacity_wait_s`` for one (then 503 + ``Retry-After``);
3. a non-streaming answer up to ``routing.response_buffer_bytes`` is read
   completely from the node before the client gets anything, so a node dying
   mid-body is still just a retry; a larger one is relayed read by read
   (:class:`~spotrelay.router.transport.upstream.BodyRelay`), up to
   ``routing.max_response_bytes``. The request deadline covers the head and
   the whole non-streaming body, and a stream until its first event;
4. a stream is answered only once the node's *first SSE event* is in hand
   (a node dying during prefill is still just a retry); the rest is relayed
   by :class:`spotrelay.router.stream.relay.StreamRelay`, which asks the stream's
   handler (``stream_handler_factory``: resume, or end with an error event)
   what to do about a break, opens continuations through
   :meth:`Proxy.open_continuation` and records breaks through
   ``Proxy._on_break``.

Requests for state one node holds (a stored Responses API response) go
through :meth:`Proxy.ask_each_node` instead of step 2: every ready node in
turn until one knows it.

Every upstream call carries the request's ``X-Request-ID``; every log line
about the request names it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from spotrelay.core.errors import openai_error
from spotrelay.core.logs import clip

from .metrics import RouterMetrics
from .registry.balancer import Balancer
from .registry.node import ModelStatus, Node
from .registry.placement import Placement, is_long
from .registry.prefix_key import prefix_key
from .registry.state import Registry
from .retry import RETRYABLE_STATUS, Failure, FailureKind, RetryBudget, RetryPolicy
from .settings import Routing, Timeouts
from .stream.assemble import StreamForm
from .stream.disconnect import ClientLink, ClientWatch
from .stream.finish import FinishTracker, expected_choices
from .stream.hedge import HedgeRace, Outcome, StallPolicy, StallWatch, race_lock
from .stream.hedging import Hedger
from .stream.named_events import NamedEvents, with_named_events
from .stream.relay import (
    BreakReason,
    ContinuationRejected,
    EndWithError,
    StreamBreak,
    StreamHandler,
    StreamRelay,
    StreamStart,
)
from .tracing import NO_TRACE, RequestTrace
from .transport.loopmark import HOP_HEADER, LOOP_HEADER, LoopMarks, hop_header
from .transport.pools import NodePools
from .transport.upstream import (
    UPSTREAM_ERRORS,
    BodyRelay,
    IdleWatchdog,
    Upstream,
    classify,
    error_event_message,
    is_error_event,
    read_bounded,
)

log = logging.getLogger("spotrelay.router")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CLIENT_CLOSED = 499  # nginx's status for "client closed request": metrics and logs only


class ApiError(Exception):
    """A data-plane error to return to the client in OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        doc = openai_error(self.status, self.message, param=self.param, code=self.code)
        return json.dumps(doc).encode()


class ClientLeft(ApiError):
    """The client disconnected while its request waited on a node; nobody gets the answer."""

    def __init__(self) -> None:
        super().__init__(CLIENT_CLOSED, "client closed the connection", code="client_disconnect")


@dataclass
class ProxyRequest:
    """A parsed client request on its way to a node."""

    request_id: str
    path: str
    body: bytes
    doc: dict[str, Any]
    model: str
    stream: bool
    received: float
    deadline: float
    session_key: str | None = None
    accept: str | None = None
    method: str = "POST"
    content_type: str = "application/json"  # multipart uploads keep the client's, boundary and all
    events: NamedEvents | None = None  # a named-event stream (Responses, Anthropic), else None
    ask_each: bool = False  # state one node holds (a stored response): ask every node in turn
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    node_id: str | None = None  # the node that answered
    hops: tuple[str, ...] = ()  # X-Spotrelay-Hop as received: routers already passed
    client: ClientLink | None = None  # the client connection, to abort work when it leaves
    requires: frozenset[str] = frozenset()  # engine capabilities a node must report
    resume_off: bool = False  # the client sent X-Spotrelay-Resume: off
    follow_up: bool = False  # made by derive(): waits for a node it has not tried yet
    long_hint: bool = False  # the client marked it long (routing.long_request_header)
    # Non-streaming, to be asked as this stream on nodes whose engine kind is in
    # routing.assemble_non_streaming (the answer assembled by router/stream/assembly.py).
    assembly: StreamForm | None = None
    trace: RequestTrace = NO_TRACE  # OpenTelemetry spans when tracing is on (router/tracing.py)

    def derive(
        self,
        doc: dict[str, Any],
        *,
        exclude: set[str] | None = None,
        requires: frozenset[str] = frozenset(),
    ) -> ProxyRequest:
        """A follow-up request (e.g. a stream continuation) with a new body.

        Same request id and deadline; attempts start from zero; ``exclude``
        (default: every node tried so far) are not picked, nor nodes whose
        engine lacks a capability in ``requires``. When every routable node was
        tried, it waits for capacity like a new request finding no node (a
        replacement for the node that broke is usually seconds away).
        """
        return replace(
            self,
            body=json.dumps(doc).encode(),
            doc=doc,
            stream=doc.get("stream") is True,
            tried=set(self.tried if exclude is None else exclude),
            attempts=0,
            node_id=None,
            requires=requires,
            follow_up=True,
            assembly=None,
        )


@dataclass
class ProxyResponse:
    """What the web layer sends: a status, a body (bytes or an iterable) and headers."""

    status: int
    body: bytes | Iterable[bytes]
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    """A non-streaming upstream answer: read in full (``bytes``), or a :class:`BodyRelay`
    for a 2xx answer over ``routing.response_buffer_bytes`` (close it if not sent)."""

    status: int
    body: bytes | BodyRelay
    content_type: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "complete"  # for the access log: "resumed" when assembled across a break


def _answer_message(answer: Answer) -> str:
    if isinstance(answer.body, BodyRelay):
        answer.body.close()
        return str(answer.status)
    try:
        err = json.loads(answer.body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"{answer.status}: {err['message']}"
    except (ValueError, AttributeError):
        pass
    return str(answer.status)


def _wanted(req: ProxyRequest) -> str:
    return f"model {clip(req.model)!r}" if req.model else "any model"


ACCEPT_RE = re.compile(r"^[\x20-\x7e]{1,256}$")


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    if header and REQUEST_ID_RE.match(header):
        return header
    return os.urandom(16).hex()


def parse_request(
    path: str,
    body: bytes,
    *,
    request_id: str,
    received: float,
    deadline_s: float,
    session_key: str | None = None,
    accept: str | None = None,
    default_model: Callable[[], str] | None = None,
    streamable: bool | None = None,
    resume_off: bool = False,
) -> ProxyRequest:
    """Validate a client body; raises :class:`ApiError` (400) for what no node could serve.

    ``default_model`` names the model for a body without one (vLLM serves its
    own then); ``streamable`` False: ``stream`` is ignored (default: every path
    but embeddings streams on request).
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    model = doc.get("model")
    if model is None and default_model is not None:
        model = default_model()
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (a non-empty string)", param="model")
    if streamable is None:
        streamable = not path.endswith("/embeddings")
    stream = streamable and doc.get("stream") is True
    return ProxyRequest(
        request_id=request_id,
        path=path,
        body=body,
        doc=doc,
        model=model,
        stream=stream,
        received=received,
        deadline=received + deadline_s,
        session_key=session_key or None,
        accept=accept if accept and ACCEPT_RE.match(accept) else None,
        resume_off=resume_off,
    )


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
        stream_handler_factory: Callable[[ProxyRequest, Proxy], StreamHandler] | None = None,
        watchdog: IdleWatchdog | None = None,
        loop_marks: LoopMarks | None = None,
        client_watch: ClientWatch | None = None,
        assembled: Callable[[Proxy, ProxyRequest, StreamStart], Answer | ApiError] | None = None,
        stall: StallPolicy | None = None,
    ) -> None:
        self.loop_marks = loop_marks if loop_marks is not None else LoopMarks()
        self.client_watch = client_watch if client_watch is not None else ClientWatch()
        self.registry = registry
        self.pools = pools  # the nodes' connection pools
        self.watchdog = watchdog
        self.stall = stall or StallPolicy()
        self.balancer = balancer
        self.policy = policy
        self.budget = budget
        self.metrics = metrics
        self.timeouts = timeouts
        self.routing = routing
        self.access_log = access_log
        self.clock = clock
        self.sleep = sleep
        self.stream_handler_factory = with_named_events(
            stream_handler_factory or (lambda req, proxy: EndWithError())
        )
        # Reads a stream to its end for a non-streaming request (req.assembly).
        self.assembled = assembled

    # -- the request as a whole --------------------------------------------------------

    def forward(self, req: ProxyRequest) -> ProxyResponse:
        if req.model and self.registry.model_status(req.model) is ModelStatus.UNKNOWN:
            err = ApiError(
                404,
                f"model {clip(req.model)!r} is not served by any registered node",
                param="model",
                code="model_not_found",
            )
            return self._finish(req, self._error_response(req, err))
        self.budget.start_request()
        try:
            result = self.ask_each_node(req) if req.ask_each else self.acquire(req)
        except BaseException:
            self.budget.end_request()
            raise
        if isinstance(result, StreamStart):
            if req.stream or self.assembled is None:  # (assembled: see _attempt_once)
                return self._stream_response(req, result)
            try:  # a non-streaming request asked as a stream: read it all, answer once
                result = self.assembled(self, req, result)
            except BaseException:
                self.budget.end_request()
                raise
        self.budget.end_request()
        if isinstance(result, ClientLeft):
            self.metrics.client_disconnects.inc()
            response = self._error_response(req, result)
            return self._finish(req, response, outcome="client_disconnect")
        if isinstance(result, ApiError):
            return self._finish(req, self._error_response(req, result))
        headers = {"X-Request-ID": req.request_id, "X-Spotrelay-Node": result.node_id}
        headers.update(result.headers)
        response = ProxyResponse(result.status, result.body, result.content_type, headers)
        return self._finish(req, response, result.outcome)

    def acquire(self, req: ProxyRequest) -> Answer | StreamStart | ApiError:
        """Attempts on successive nodes until an answer, a stream start, or a final error.

        Public for stream resume: call it with a request whose ``tried`` holds the
        nodes to avoid. Never raises for upstream trouble.
        """
        last: Failure | None = None
        slot = False
        try:
            while True:
                if req.attempts and req.client is not None and req.client.check():
                    return ClientLeft()  # left during the backoff (the watch covers attempts)
                if self.clock() >= req.deadline:
                    return self._deadline_error(req, last)
                node = self._choose(req, retrying=last is not None)
                if req.client is not None and req.client.gone:
                    return ClientLeft()  # left during a capacity wait
                if isinstance(node, ApiError):
                    return node
                if node is None:
                    return self._give_up(req, last)
                req.attempts += 1
                req.tried.add(node.id)
                result = self._attempt(node, req)
                if slot:
                    self.budget.release()
                    slot = False
                if not isinstance(result, Failure):
                    self.metrics.attempt_ok()
                    self.registry.record_success(node)
                    req.node_id = node.id
                    return result
                if req.client is not None and req.client.gone:
                    return ClientLeft()  # the watch aborted the attempt: not the node's fault
                last = result
                self._count_failure(node, req, result)
                if not self.policy.should_retry(result, req.attempts):
                    return self._give_up(req, last)
                if not self.budget.acquire(req.deadline - self.clock()):
                    self.metrics.budget_exhausted.inc()
                    log.warning(
                        "retry budget exhausted; not retrying",
                        extra={"request_id": req.request_id, "reason": result.reason},
                    )
                    return self._give_up(req, last)
                slot = True
                self.metrics.retries.labels(result.reason).inc()
                delay = min(self.policy.backoff_s(req.attempts), req.deadline - self.clock())
                if delay > 0:
                    self.sleep(delay)
        finally:
            if slot:
                self.budget.release()

    def ask_each_node(self, req: ProxyRequest) -> Answer | StreamStart | ApiError:
        """For state that lives on one unknown node (a stored response): each ready node
        in turn until one answers something else than 404; a node that fails is skipped.

        No retry budget or backoff: every attempt goes to a different node.
        """
        not_found: Answer | None = None
        failed: Failure | None = None
        for node in self._candidates(req):
            if self.clock() >= req.deadline:
                return self._deadline_error(req, failed)
            req.attempts += 1
            req.tried.add(node.id)
            result = self._attempt(node, req)
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
        return self._give_up(req, failed)  # a node that failed may hold it

    # -- one attempt ---------------------------------------------------------------------

    def _attempt(self, node: Node, req: ProxyRequest) -> Answer | StreamStart | Failure:
        """One attempt; whatever goes wrong releases the node's in-flight lease and is a Failure.

        Until the answer (or a stream's first event) is in hand, the client's
        departure aborts the node connection (:mod:`spotrelay.router.stream.disconnect`).
        """
        kind = "resume" if req.follow_up else "retry" if req.attempts > 1 else "attempt"
        with (
            self.client_watch.watching(req.client),
            self.loop_marks.issued() as mark,
            req.trace.attempt(node.id, kind) as span,
        ):
            try:
                result = self._attempt_once(node, req, mark)
                if isinstance(result, Failure):
                    span.failed(str(result.kind), result.detail)
                return result
            except Exception as exc:  # a bug or an unforeseen input: the node's failure, not a 500
                log.exception(
                    "attempt on node %s raised %s",
                    node.id,
                    type(exc).__name__,
                    extra={"request_id": req.request_id},
                )
                failure = f"{type(exc).__name__}: {exc}"[:200]
                span.failed(str(FailureKind.INTERNAL), failure)
                return Failure(FailureKind.INTERNAL, node.id, failure)

    def _upstream_headers(self, req: ProxyRequest, mark: str) -> dict[str, str]:
        headers = {"X-Request-ID": req.request_id, HOP_HEADER: hop_header(req.hops, mark)}
        if req.method not in ("GET", "HEAD"):  # uploads keep their multipart Content-Type
            headers["Content-Type"] = req.content_type
        if req.accept:
            headers["Accept"] = req.accept
        headers.update(req.trace.headers())
        return headers

    def _attempt_once(
        self, node: Node, req: ProxyRequest, mark: str
    ) -> Answer | StreamStart | Failure:
        connect_s, read_s = self._timeouts_for(req)
        body, stream = req.body, req.stream
        if (
            req.assembly is not None
            and not stream
            and self.assembled is not None
            and node.engine.kind in self.routing.assemble_non_streaming
        ):
            body, stream = req.assembly.body, True
        exchange = self.registry.acquire(node)
        if exchange.reason is not None:  # the node was lost just after it was picked
            self.registry.release(node, exchange)
            return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
        client = req.client

        def on_connection(sock: Any) -> None:
            exchange.attach(sock)
            if client is not None:
                client.attach(sock)

        started = self.clock()
        try:
            resp = self.pools.get(node).request(
                req.method,
                req.path,
                headers=self._upstream_headers(req, mark),
                body=body,
                connect_timeout=connect_s,
                read_timeout=read_s,
                on_connection=on_connection,
                deadline=req.deadline,
            )
        except BaseException as exc:
            self.registry.release(node, exchange)
            if not isinstance(exc, UPSTREAM_ERRORS):
                raise
            if exchange.reason is not None:
                return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
            kind, detail = classify(exc)
            return Failure(kind, node.id, detail)
        upstream = Upstream(node, resp, self.registry, started, exchange)
        handed_over = False
        try:
            status = resp.status
            content_type = resp.headers.get("content-type", "application/json")
            if status == 508 and resp.headers.get(LOOP_HEADER.lower()):
                return Failure(FailureKind.LOOP, node.id, "the node URL leads back to a router")
            unusable = self._unusable(req, status, content_type)
            if unusable is not None:
                return Failure(FailureKind.BAD_RESPONSE, node.id, unusable)
            if status in RETRYABLE_STATUS:
                body = self._error_body(resp, status)
                extra = {}
                if resp.headers.get("retry-after"):
                    extra["Retry-After"] = resp.headers["retry-after"]
                return Failure(
                    FailureKind.STATUS,
                    node.id,
                    f"upstream answered {status}",
                    status=status,
                    body=body,
                    content_type=content_type,
                    headers=extra,
                )
            # (An assembled attempt answered with JSON after all is that answer: read below.)
            if stream and status == 200 and content_type.startswith("text/event-stream"):
                batches = upstream.event_batches(self.routing.max_event_bytes)
                first = next(batches, None)
                if first is None:
                    if exchange.reason is not None:
                        return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
                    return Failure(FailureKind.RESET, node.id, "stream ended before any event")
                if is_error_event(first[0]):
                    msg = error_event_message(first[0])
                    return Failure(FailureKind.ERROR_EVENT, node.id, msg)
                if req.events is not None:  # named events: wait for the first real output
                    first, error = req.events.first_output(first, batches)
                    if first is None:
                        if exchange.reason is not None:
                            return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
                        return Failure(FailureKind.RESET, node.id, "stream ended before output")
                    if error is not None:
                        return Failure(FailureKind.ERROR_EVENT, node.id, error)
                upstream.stall = StallWatch(self.stall, node.rhythm)
                upstream.watch_idle(self.timeouts.stream_idle_s, self.watchdog)
                self.metrics.upstream_latency.observe(self.clock() - started)
                handed_over = True
                return StreamStart(upstream, batches, first)
            answer = self._answer(upstream, req, status, content_type)
            if isinstance(answer, Answer):
                self.metrics.upstream_latency.observe(self.clock() - started)
                handed_over = isinstance(answer.body, BodyRelay)
            return answer
        except UPSTREAM_ERRORS as exc:
            if exchange.reason is not None:
                return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
            kind, detail = classify(exc)
            return Failure(kind, node.id, detail)
        finally:
            if not handed_over:
                upstream.close()

    @staticmethod
    def _unusable(req: ProxyRequest, status: int, content_type: str) -> str | None:
        """Why an answer's head is one no client could use (None: it is fine).

        Retried elsewhere like a reset: a client must never get status 999
        passed through, or a stream request answered with an HTML page (the
        OpenAI SDK then yields no chunk and raises nothing).
        """
        if not 200 <= status <= 599:
            return f"the node answered HTTP status {status}"
        if req.stream and status == 200 and not content_type.startswith("text/event-stream"):
            return f"the node answered a stream request with {clip(content_type, 60)!r}"
        return None

    def _error_body(self, resp: Any, status: int) -> bytes:
        """An error answer's body, kept to pass through: at most ``response_buffer_bytes``."""
        limit = self.routing.response_buffer_bytes
        pieces, _, complete = read_bounded(resp.chunks(), limit)
        if complete:
            return b"".join(pieces)
        message = f"the node answered {status} with a body over {limit} bytes"
        return json.dumps(openai_error(status, message, code="upstream_error")).encode()

    def _answer(
        self, upstream: Upstream, req: ProxyRequest, status: int, content_type: str
    ) -> Answer | Failure:
        """A non-streaming answer: read whole up to ``response_buffer_bytes`` (so a node that
        fails mid-body is still a retry), relayed read by read past that (2xx only), and
        refused past ``max_response_bytes``."""
        node_id, resp = upstream.node.id, upstream.resp
        limit = self.routing.max_response_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            detail = f"a {declared}-byte answer exceeds routing.max_response_bytes ({limit})"
            return Failure(FailureKind.TOO_LARGE, node_id, detail)
        window = self.routing.response_buffer_bytes
        pieces, size, complete = read_bounded(resp.chunks(), window)
        if complete:
            return Answer(status, b"".join(pieces), content_type, node_id)
        if not 200 <= status <= 299:
            detail = f"an error answer ({status}) over {window} bytes"
            return Failure(FailureKind.BAD_RESPONSE, node_id, detail)
        relay = BodyRelay(upstream, pieces, size, limit, req.request_id)
        headers = {} if resp.chunked or not declared else {"Content-Length": declared}
        return Answer(status, relay, content_type, node_id, headers)

    def _timeouts_for(self, req: ProxyRequest) -> tuple[float, float]:
        """Connect and first-byte timeouts, shortened to what is left of the deadline."""
        remaining = max(req.deadline - self.clock(), 0.01)
        return min(self.timeouts.connect_s, remaining), min(self.timeouts.first_byte_s, remaining)

    # -- choosing a node and waiting for capacity -------------------------------------------

    def _choose(self, req: ProxyRequest, *, retrying: bool) -> Node | ApiError | None:
        """The next node; None when every routable node was tried; ApiError on no capacity."""
        balancer = self.balancer
        placement = self._placement(req)
        candidates = self._candidates(req)
        node = balancer.pick(
            candidates, exclude=req.tried, session_key=req.session_key, placement=placement
        )
        if node is not None:
            balancer.served(placement, node)
            return node
        if candidates and not req.follow_up:
            return None
        limit = min(self.clock() + self.routing.no_capacity_wait_s, req.deadline)
        log.info(
            "no %s node serves the model; waiting for capacity",
            "untried" if candidates else "ready",
            extra={"request_id": req.request_id, "model": clip(req.model)},
        )
        while (remaining := limit - self.clock()) > 0:
            self.registry.wait_for_change(min(remaining, 0.5))
            if req.client is not None and req.client.check():
                return None
            node = balancer.pick(
                self._candidates(req),
                exclude=req.tried,
                session_key=req.session_key,
                placement=placement,
            )
            if node is not None:
                self.metrics.capacity_waits.labels("served").inc()
                balancer.served(placement, node)
                return node
        self.metrics.capacity_waits.labels("timed_out").inc()
        if retrying:
            return None
        waited = self.routing.no_capacity_wait_s
        return ApiError(
            503,
            f"no ready node serves {_wanted(req)} (waited {waited:g}s); retry later",
            code="no_capacity",
            headers={"Retry-After": str(self.routing.retry_after_s)},
        )

    def _placement(self, req: ProxyRequest) -> Placement:
        """What the balancer weighs besides load: the prompt's prefix keys and the risk rule."""
        r = self.routing
        key = None
        if self.balancer.cache_aware and req.doc:
            key = prefix_key(
                req.doc, block_chars=r.prefix_block_chars, anchor_chars=r.prefix_anchor_chars
            )
        long = r.risk_aware and is_long(
            req.doc, hint=req.long_hint, threshold=r.long_request_tokens
        )
        return Placement(key=key, long=long, resume=req.follow_up)

    def _candidates(self, req: ProxyRequest) -> list[Node]:
        """Routable nodes for ``req``: those serving its model (any, ``model`` empty),
        and reporting the engine capabilities it ``requires``."""
        if req.model:
            nodes = self.registry.candidates(req.model)
        else:
            by_id: dict[str, Node] = {}
            for model in self.registry.ready_models():
                for node in self.registry.candidates(model):
                    by_id.setdefault(node.id, node)
            nodes = list(by_id.values())
        if req.requires:
            nodes = [n for n in nodes if req.requires <= n.engine.capabilities]
        return nodes

    # -- failures and final answers ---------------------------------------------------------

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

    def _give_up(self, req: ProxyRequest, last: Failure | None) -> Answer | ApiError:
        if last is None:
            return ApiError(
                503,
                f"no other node serves {_wanted(req)}",
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

    def _deadline_error(self, req: ProxyRequest, last: Failure | None) -> ApiError:
        tries = f" after {req.attempts} attempt(s), last: {last.reason}" if last else ""
        return ApiError(504, f"request deadline exceeded{tries}", code="deadline_exceeded")

    def _error_response(self, req: ProxyRequest, err: ApiError) -> ProxyResponse:
        headers = {"X-Request-ID": req.request_id, **err.headers}
        return ProxyResponse(err.status, err.body(), "application/json", headers)

    # -- streams -------------------------------------------------------------------------

    def _stream_response(self, req: ProxyRequest, start: StreamStart) -> ProxyResponse:
        self.metrics.ttft.observe(self.clock() - req.received)
        upstream = start.upstream
        expected = expected_choices(req.path, req.doc)

        def on_finish(outcome: str) -> None:
            self.budget.end_request()
            if outcome == "client_disconnect":
                self.metrics.client_disconnects.inc()
            self._log_done(req, 200, outcome)

        handler = self.stream_handler_factory(req, self)
        frame_start = getattr(handler, "frame_start", None)
        if frame_start is not None:  # a named-event stream: its terminal events end it
            start = frame_start(start)
        relay = StreamRelay(
            start,
            handler,
            open_next=lambda body, requires: self.open_continuation(req, body, requires),
            on_break=lambda up, brk: self._on_break(req, up, brk),
            on_finish=on_finish,
            finishes=lambda: FinishTracker(expected),
            hedger=self._hedger(req, handler),
        )
        self.metrics.requests.labels(self._model_label(req), "200").inc()
        headers = {
            "X-Request-ID": req.request_id,
            "X-Spotrelay-Node": upstream.node.id,
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

        def open_hedge(body: dict[str, Any], requires: frozenset[str], link: ClientLink):
            return self.open_continuation(req, body, requires, link=link)

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
        message = f"node {result.node_id} answered {_answer_message(result)}"
        if 400 <= result.status < 500 and result.status not in (408, 429):
            raise ContinuationRejected(message)
        raise RuntimeError(message)

    def _on_break(self, req: ProxyRequest, upstream: Upstream, brk: StreamBreak) -> None:
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

    def _finish(
        self, req: ProxyRequest, response: ProxyResponse, outcome: str = "complete"
    ) -> ProxyResponse:
        label = self._model_label(req)
        self.metrics.requests.labels(label, str(response.status)).inc()
        self._log_done(req, response.status, outcome)
        return response

    def _model_label(self, req: ProxyRequest) -> str:
        """The metrics label: bounded model names; ``none`` for model-less requests (GETs)."""
        return self.metrics.model_label(req.model) if req.model else "none"

    def _log_done(self, req: ProxyRequest, status: int, outcome: str) -> None:
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
