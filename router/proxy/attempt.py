"""One attempt: one request sent to one node, up to its answer or its stream's first output.

Whatever goes wrong before that is a :class:`~spotrelay.router.retry.Failure`
(retried on another node by :mod:`.attempts`), never an exception: a refused
connection, a timeout, a retryable status, an answer no client could use, a
node lost while it answered, a stream that ends or reports an error before
its first output, even a bug in the router. Until then the client's
departure aborts the node connection (:mod:`spotrelay.router.stream.disconnect`)
and the attempt's hop mark is open (:mod:`spotrelay.router.transport.loopmark`).

A non-streaming answer up to ``routing.response_buffer_bytes`` is read whole
before the client gets anything (a node dying mid-body is still a retry); a
larger 2xx one is relayed read by read (:class:`BodyRelay`), up to
``routing.max_response_bytes``. A stream is handed over once its handler
(``StreamHandler.opening``) has its first output.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from spotrelay.core.errors import openai_error
from spotrelay.core.logs import clip

from ..metrics import RouterMetrics
from ..registry.exchange import Exchange
from ..registry.node import Node
from ..registry.state import Registry
from ..retry import RETRYABLE_STATUS, Failure, FailureKind
from ..settings import Routing, Timeouts
from ..stream.disconnect import ClientWatch
from ..stream.hedge import StallPolicy, StallWatch
from ..stream.relay import EndWithError, StreamStart
from ..transport.loopmark import HOP_HEADER, LOOP_HEADER, LoopMarks, hop_header
from ..transport.pools import NodePools
from ..transport.upstream import (
    UPSTREAM_ERRORS,
    BodyRelay,
    IdleWatchdog,
    Upstream,
    classify,
    error_event_message,
    is_error_event,
    read_bounded,
)
from .request import Answer, ProxyRequest

log = logging.getLogger("spotrelay.router")

Result = Answer | StreamStart | Failure

# A stream asked for a non-streaming request (routing.assemble_non_streaming) has no
# handler of its own yet: chat and completions streams start with their first event.
_PLAIN = EndWithError()


class NodeAttempt:
    """Sends a request to a node and reads its answer's head (see the module docstring)."""

    def __init__(
        self,
        *,
        registry: Registry,
        pools: NodePools,
        metrics: RouterMetrics,
        timeouts: Timeouts,
        routing: Routing,
        loop_marks: LoopMarks,
        client_watch: ClientWatch,
        stall: StallPolicy,
        watchdog: IdleWatchdog | None = None,
        assembles: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.pools = pools  # the nodes' connection pools
        self.metrics = metrics
        self.timeouts = timeouts
        self.routing = routing
        self.loop_marks = loop_marks
        self.client_watch = client_watch
        self.stall = stall
        self.watchdog = watchdog
        self.assembles = assembles  # non-streaming requests may be asked as streams
        self.clock = clock

    def run(self, node: Node, req: ProxyRequest) -> Result:
        """One attempt; whatever goes wrong releases the node's in-flight lease and is a Failure."""
        kind = "resume" if req.follow_up else "retry" if req.attempts > 1 else "attempt"
        with (
            self.client_watch.watching(req.client),
            self.loop_marks.issued() as mark,
            req.trace.attempt(node.id, kind) as span,
        ):
            try:
                result = self._once(node, req, mark)
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

    def _once(self, node: Node, req: ProxyRequest, mark: str) -> Result:
        body, stream = req.body, req.stream
        if (
            req.assembly is not None
            and not stream
            and self.assembles
            and node.engine.kind in self.routing.assemble_non_streaming
        ):
            body, stream = req.assembly.body, True
        exchange = self.registry.acquire(node)
        if exchange.reason is not None:  # the node was lost just after it was picked
            self.registry.release(node, exchange)
            return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
        started = self.clock()
        resp = self._send(node, req, mark, exchange, body)
        if isinstance(resp, Failure):
            return resp
        upstream = Upstream(node, resp, self.registry, started, exchange)
        result: Result | None = None
        try:
            result = self._read(upstream, exchange, req, stream)
        except UPSTREAM_ERRORS as exc:
            result = _broken(node, exchange, exc)
        finally:
            if not _handed_over(result):
                upstream.close()
        if not isinstance(result, Failure):
            self.metrics.upstream_latency.observe(self.clock() - started)
        return result

    def _send(
        self, node: Node, req: ProxyRequest, mark: str, exchange: Exchange, body: bytes
    ) -> Any:
        """The node's response (its head read), or the Failure that prevented it."""
        connect_s, read_s = self._timeouts_for(req)
        client = req.client

        def on_connection(sock: Any) -> None:
            exchange.attach(sock)
            if client is not None:
                client.attach(sock)

        try:
            return self.pools.get(node).request(
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
            return _broken(node, exchange, exc)

    def _upstream_headers(self, req: ProxyRequest, mark: str) -> dict[str, str]:
        headers = {"X-Request-ID": req.request_id, HOP_HEADER: hop_header(req.hops, mark)}
        if req.method not in ("GET", "HEAD"):  # uploads keep their multipart Content-Type
            headers["Content-Type"] = req.content_type
        if req.accept:
            headers["Accept"] = req.accept
        headers.update(req.trace.headers())
        return headers

    def _timeouts_for(self, req: ProxyRequest) -> tuple[float, float]:
        """Connect and first-byte timeouts, shortened to what is left of the deadline."""
        remaining = max(req.deadline - self.clock(), 0.01)
        return min(self.timeouts.connect_s, remaining), min(self.timeouts.first_byte_s, remaining)

    # -- the answer's head -----------------------------------------------------------------

    def _read(
        self, upstream: Upstream, exchange: Exchange, req: ProxyRequest, stream: bool
    ) -> Result:
        node_id, resp = upstream.node.id, upstream.resp
        status = resp.status
        content_type = resp.headers.get("content-type", "application/json")
        if status == 508 and resp.headers.get(LOOP_HEADER.lower()):
            return Failure(FailureKind.LOOP, node_id, "the node URL leads back to a router")
        unusable = _unusable(req, status, content_type)
        if unusable is not None:
            return Failure(FailureKind.BAD_RESPONSE, node_id, unusable)
        if status in RETRYABLE_STATUS:
            return self._retryable(resp, node_id, status, content_type)
        # (An assembled attempt answered with JSON after all is that answer: read below.)
        if stream and status == 200 and content_type.startswith("text/event-stream"):
            return self._stream_start(upstream, exchange, req)
        return self._answer(upstream, req, status, content_type)

    def _retryable(self, resp: Any, node_id: str, status: int, content_type: str) -> Failure:
        """A status another node may answer better (429, 503, ...), its body kept to pass
        through when no node does."""
        extra = {}
        if resp.headers.get("retry-after"):
            extra["Retry-After"] = resp.headers["retry-after"]
        return Failure(
            FailureKind.STATUS,
            node_id,
            f"upstream answered {status}",
            status=status,
            body=self._error_body(resp, status),
            content_type=content_type,
            headers=extra,
        )

    def _error_body(self, resp: Any, status: int) -> bytes:
        """An error answer's body, kept to pass through: at most ``response_buffer_bytes``."""
        limit = self.routing.response_buffer_bytes
        pieces, _, complete = read_bounded(resp.chunks(), limit)
        if complete:
            return b"".join(pieces)
        message = f"the node answered {status} with a body over {limit} bytes"
        return json.dumps(openai_error(status, message, code="upstream_error")).encode()

    def _stream_start(
        self, upstream: Upstream, exchange: Exchange, req: ProxyRequest
    ) -> StreamStart | Failure:
        """The stream once its handler has its first output; retried before that."""
        node = upstream.node
        batches = upstream.event_batches(self.routing.max_event_bytes)
        first = next(batches, None)
        if first is None:
            return _ended(node, exchange, "stream ended before any event")
        if is_error_event(first[0]):
            return Failure(FailureKind.ERROR_EVENT, node.id, error_event_message(first[0]))
        opened = (req.handler or _PLAIN).opening(StreamStart(upstream, batches, first))
        if opened is None:
            return _ended(node, exchange, "stream ended before output")
        if isinstance(opened, str):
            return Failure(FailureKind.ERROR_EVENT, node.id, opened)
        upstream.stall = StallWatch(self.stall, node.rhythm)
        upstream.watch_idle(self.timeouts.stream_idle_s, self.watchdog)
        return opened

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


def _handed_over(result: Result | None) -> bool:
    """Whether ``result`` holds the upstream open (a stream, a relayed body)."""
    if isinstance(result, StreamStart):
        return True
    return isinstance(result, Answer) and isinstance(result.body, BodyRelay)


def _broken(node: Node, exchange: Exchange, exc: BaseException) -> Failure:
    """The failure an upstream error means: a lost node's, else the error's kind."""
    if exchange.reason is not None:
        return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
    kind, detail = classify(exc)
    return Failure(kind, node.id, detail)


def _ended(node: Node, exchange: Exchange, detail: str) -> Failure:
    """A stream that ended before it started: a lost node's failure, else a reset."""
    if exchange.reason is not None:
        return Failure(FailureKind.NODE_LOST, node.id, exchange.reason)
    return Failure(FailureKind.RESET, node.id, detail)
