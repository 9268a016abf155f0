"""A non-streaming request served from a stream: the I/O around :mod:`.assemble`.

When :meth:`Proxy._attempt_once <spotrelay.router.proxy.Proxy>` asked a node
for a non-streaming request as a stream (``routing.assemble_non_streaming``),
the proxy hands the started stream here. It is read to its end through the
same relay and handler as a client stream (:class:`~.stream.StreamRelay`:
idle watchdog, break detection, resume on another node, identity and usage
restated across seams), and the relay's client bytes, framed by
:class:`~.sse.SSEFramer`, feed an :class:`~.assemble.Assembler` instead of a
socket. The client gets one JSON body:

- complete (or resumed) → ``200`` with the assembled answer;
- broken beyond resume (not resumable, or its continuations exhausted) →
  the request begins again on a node not tried yet, within the retry policy
  and budget (the client has seen nothing, so this is an ordinary retry);
  after the last → ``502`` in OpenAI's error shape, never a truncated body;
- the client left → the upstream is aborted, ``499`` for metrics and logs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from ..proxy import Answer, ApiError, ClientLeft, Proxy, ProxyRequest
from ..retry import Failure, FailureKind
from ..transport.upstream import Upstream
from .assemble import Assembler, NotAssembled
from .finish import FinishTracker, expected_choices
from .relay import ContinuationRejected, StreamBreak, StreamRelay, StreamStart
from .resume_request import CHAT
from .sse import BROKEN_CODE, DONE, SSEFramer, event_data

log = logging.getLogger("spotrelay.router")

_DONE_STR = DONE.decode()


@dataclass
class _Read:
    """What reading one stream to its end gave."""

    outcome: str  # the relay's: complete, resumed, broken, client_disconnect
    assembler: Assembler
    error: str | None = None  # the message of the relay's (or the engine's) error event


def assembled_answer(proxy: Proxy, req: ProxyRequest, start: StreamStart) -> Answer | ApiError:
    """The answer to non-streaming ``req`` from the stream ``start`` (see the module docstring)."""
    assert req.assembly is not None
    restarted = False
    while True:
        read = _read(proxy, req, start)
        if req.client is not None and req.client.gone:
            proxy.metrics.assembled.labels("client_disconnect").inc()
            return ClientLeft()
        if read.outcome in ("complete", "resumed"):
            try:
                body = read.assembler.body()
            except NotAssembled as exc:
                read.error = f"incomplete answer: {exc}"
            else:
                outcome = "restarted" if restarted else read.outcome
                proxy.metrics.assembled.labels(outcome).inc()
                return Answer(200, body, "application/json", req.node_id or "", outcome=outcome)
        why = read.error or read.outcome
        nxt = _restart(proxy, req, why)
        if isinstance(nxt, StreamStart):
            start, restarted = nxt, True
            continue
        if nxt is None or (isinstance(nxt, ApiError) and not isinstance(nxt, ClientLeft)):
            # No retry left, or no node left to begin again on: the break is the news.
            proxy.metrics.assembled.labels("failed").inc()
            message = f"the node generating this answer failed and it could not be resumed: {why}"
            return ApiError(502, message[:500], code=BROKEN_CODE)
        if isinstance(nxt, Answer) and nxt.status == 200:
            proxy.metrics.assembled.labels("restarted").inc()
            nxt.outcome = "restarted"
        return nxt  # the engine's own answer (a node not assembled for), or a final error


def _restart(proxy: Proxy, req: ProxyRequest, why: str) -> Answer | ApiError | StreamStart | None:
    """Begin ``req`` again on an untried node; None when the retry policy or budget says no."""
    failure = Failure(FailureKind.RESET, req.node_id or "", why)
    if not proxy.policy.should_retry(failure, req.attempts):
        return None
    if not proxy.budget.acquire(req.deadline - proxy.clock()):
        proxy.metrics.budget_exhausted.inc()
        return None
    try:
        proxy.metrics.retries.labels("stream_broken").inc()
        log.warning(
            "assembled answer broke (%s); beginning again on another node",
            why,
            extra={"request_id": req.request_id},
        )
        return proxy.acquire(req)
    finally:
        proxy.budget.release()


def _read(proxy: Proxy, req: ProxyRequest, start: StreamStart) -> _Read:
    """Relay ``start`` (and its continuations) to an assembler; the outcome."""
    assert req.assembly is not None
    sreq = replace(req, doc=req.assembly.doc, body=req.assembly.body, stream=True, assembly=None)
    client = req.client
    gone = (lambda: client.gone) if client is not None else (lambda: False)
    outcome: list[str] = []

    def on_break(up: Upstream, brk: StreamBreak) -> None:
        if not gone():  # a departed client's aborted upstream is not the node's failure
            proxy._on_break(sreq, up, brk)

    def open_next(body: dict[str, Any], requires: frozenset[str]) -> StreamStart:
        if gone():
            raise ContinuationRejected("the client left")
        return proxy.open_continuation(sreq, body, requires)

    expected = expected_choices(sreq.path, sreq.doc)
    relay = StreamRelay(
        start,
        proxy.stream_handler_factory(sreq, proxy),
        open_next=open_next,
        on_break=on_break,
        on_finish=outcome.append,
        finishes=lambda: FinishTracker(expected),
    )
    assembler = Assembler(sreq.path == CHAT)
    framer = SSEFramer()
    error: str | None = None
    with proxy.client_watch.watching(client, interrupt=lambda: relay.upstream.resp.interrupt()):
        try:
            for data in relay:
                for event in framer.feed(data):
                    error = _feed(assembler, event) or error
        finally:
            relay.close()
    return _Read(outcome[0] if outcome else "broken", assembler, error)


def _feed(assembler: Assembler, event: bytes) -> str | None:
    """One client event into the assembler; an error event's message instead."""
    payload = event_data(event)
    if payload is None or payload in (DONE, _DONE_STR):
        return None
    try:
        obj = json.loads(payload)
    except ValueError:
        return "malformed event"
    if not isinstance(obj, dict):
        return "malformed event"
    if "error" in obj:
        err = obj["error"]
        return str(err.get("message") if isinstance(err, dict) else err)
    assembler.feed(obj)
    return None
