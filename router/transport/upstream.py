"""Talking to nodes: connection pools, open responses, failure classification, SSE framing.

One keep-alive pool per node (:class:`spotrelay.router.transport.h1.Pool`, kept by
:mod:`.pools`: made on first use, closed when the node leaves). Pools connect to
the address the network policy vetted, presenting the registered host name as
``Host``/SNI.
"""

from __future__ import annotations

import errno
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from spotrelay.core.ticker import Ticker

from ..registry.exchange import Exchange
from ..registry.node import Node
from ..registry.state import Registry
from ..retry import FailureKind
from ..stream.hedge import StallWatch
from ..stream.sse import EventTooLarge, SSEFramer, data_json
from .h1 import ConnectFailed, Pool, ProtocolError, Response
from .netpolicy import NodeTarget

log = logging.getLogger("spotrelay.router")

# Everything the node connection can raise: h1 raises OSError subclasses only.
UPSTREAM_ERRORS = (OSError,)


class BadStream(ProtocolError):
    """The node's stream cannot be relayed as it is (an event over ``routing.max_event_bytes``,
    invalid UTF-8): like a reset, a retry before the first event and a break after it."""


def host_header(target: NodeTarget) -> str:
    """``Host`` as the node expects it: the registered name (or address) and a non-default port."""
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


def make_pool(target: NodeTarget, maxsize: int) -> Pool:
    """A keep-alive pool for one node, connecting to its vetted address."""
    tls = ssl.create_default_context() if target.scheme == "https" else None
    return Pool(
        target.address,
        target.port,
        host_header=host_header(target),
        maxsize=maxsize,
        tls_server_name=target.host if tls else None,
        ssl_context=tls,
    )


def classify(exc: BaseException) -> tuple[FailureKind, str]:
    """What kind of failure an exception from a node connection is."""
    if isinstance(exc, ConnectFailed):
        kind = FailureKind.CONNECT_TIMEOUT if exc.timed_out else FailureKind.CONNECT_ERROR
        return kind, _short(exc)
    if isinstance(exc, TimeoutError):
        return FailureKind.FIRST_BYTE_TIMEOUT, _short(exc) or "timed out"
    return FailureKind.RESET, _short(exc)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def is_error_event(event: bytes) -> bool:
    """An SSE event carrying an error object (vLLM's mid-stream failure report)."""
    if b"error" not in event[:48]:
        return False
    doc = data_json(event)
    return isinstance(doc, dict) and ("error" in doc or doc.get("object") == "error")


def error_event_message(event: bytes) -> str:
    doc = data_json(event)
    if not isinstance(doc, dict):
        return ""
    err = doc.get("error", doc)
    return str(err.get("message", "")) if isinstance(err, dict) else str(err)


@dataclass(eq=False)
class Upstream:
    """An open upstream response; holds one in-flight lease on its node until closed."""

    node: Node
    resp: Response
    registry: Registry
    started: float
    exchange: Exchange | None = None  # cut when the node is lost (see .exchange)
    last_activity: float = 0.0  # monotonic time of the last complete event from the node
    idle_s: float | None = None  # the stream idle timeout, once watched
    idle_timed_out: bool = False  # the watchdog ended it
    stall: StallWatch | None = None  # the stream's rhythm, once watched
    on_stall: Callable[[Upstream], Any] | None = None  # the relay's hedger, called by the sweep
    _watchdog: IdleWatchdog | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def done(self) -> bool:
        """The node finished the body cleanly (the connection can be reused)."""
        return self.resp.complete

    def close(self, *, abort: bool = False) -> None:
        """Release the lease; close the connection unless the body completed.

        Closing the socket is how the engine learns the client is gone: vLLM
        aborts a request whose connection dropped, which frees its GPU slot.
        """
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.unwatch(self)
        try:
            if abort or not self.resp.complete:
                self.resp.close()
            else:
                self.resp.release()
        finally:
            self.registry.release(self.node, self.exchange)

    @property
    def cut_reason(self) -> str | None:
        """Why the router cut this exchange (the node was lost), or None."""
        return self.exchange.reason if self.exchange is not None else None

    def watch_idle(self, idle_s: float, watchdog: IdleWatchdog | None) -> None:
        """From now on, end the stream when the node sends nothing for ``idle_s``.

        With a watchdog the socket waits without a timeout (cheaper under
        gevent) and the watchdog interrupts it; without one, a socket timeout.
        """
        self.idle_s = idle_s
        self.last_activity = monotonic()
        self.resp.deadline = None  # the request deadline ends with the first event
        if watchdog is None:
            self.resp.set_timeout(idle_s)
            return
        self.resp.set_timeout(None)
        self._watchdog = watchdog
        watchdog.watch(self)

    def silent_s(self, now: float | None = None) -> float:
        """Seconds since the node's last complete event."""
        return (monotonic() if now is None else now) - self.last_activity

    def raw_chunks(self) -> Iterator[bytes]:
        """Body bytes as they arrive."""
        return self.resp.chunks()

    def event_batches(self, max_event: int | None = None) -> Iterator[list[bytes]]:
        """Complete SSE events, grouped as they arrived (one list per upstream read).

        Framed by :class:`~spotrelay.router.stream.sse.SSEFramer`, whose final-event
        rule applies: a partial event is dispatched only at a clean end of the
        body, never when the body broke. Raises the upstream's errors, and
        :class:`BadStream` for an event over ``max_event`` bytes or one that is
        not UTF-8 (the events before it are yielded first): the client's SSE
        decoder would fail on it (the OpenAI SDK raises ``UnicodeDecodeError``).
        UTF-8 is checked only where a non-ASCII byte arrived (``bytes.isascii``
        is a word-at-a-time scan; most streams are ASCII JSON).
        """
        framer = SSEFramer(max_event)
        unchecked = False  # non-ASCII bytes arrived that no UTF-8 check has covered yet
        try:
            for chunk in self.raw_chunks():
                events = framer.feed(chunk)
                if not unchecked and not chunk.isascii():
                    unchecked = True
                if events:
                    # Idleness is measured in events: bytes that complete none (a node
                    # trickling a partial event) do not keep a stream alive.
                    now = monotonic()
                    if self.stall is not None:
                        self.stall.observe(now - self.last_activity)
                    self.last_activity = now
                    if unchecked:
                        yield from _checked(events)
                        unchecked = framer.pending
                        continue
                    yield events
            tail = framer.end()
        except EventTooLarge as exc:
            raise BadStream(str(exc)) from None
        if tail:
            yield from _checked(tail)


def _checked(events: list[bytes]) -> Iterator[list[bytes]]:
    """``events``, or those before the first that is not UTF-8 and then :class:`BadStream`."""
    for i, event in enumerate(events):
        try:
            event.decode()
        except UnicodeDecodeError:
            if i:
                yield events[:i]
            raise BadStream(
                f"the node sent an SSE event that is not UTF-8 ({i + 1} of {len(events)} in a read)"
            ) from None
    yield events


def read_bounded(chunks: Iterator[bytes], limit: int) -> tuple[list[bytes], int, bool]:
    """The start of a body: its pieces, their size and whether the body ended.

    Reads until the body ends or more than ``limit`` bytes arrived.
    """
    pieces: list[bytes] = []
    size = 0
    for piece in chunks:
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return pieces, size, False
    return pieces, size, True


class RelayAborted(ConnectionResetError):
    """Raised to the WSGI server by :class:`BodyRelay` to cut a client connection mid-body.

    A connection reset is what gunicorn answers by closing the socket without
    the last chunk or the rest of the ``Content-Length`` (and without a
    traceback), so the client sees a truncated answer, never a short one
    that looks complete.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.ECONNRESET, message)


class BodyRelay:
    """A non-streaming answer too large to buffer, relayed read by read (a WSGI iterable).

    The WSGI server writes each read before asking for the next, so a slow
    client slows the node's connection instead of filling the router's
    memory (backpressure); the router holds the first ``pieces`` and one read.
    Past ``limit`` bytes in all, or when the node breaks off, the client
    connection is cut (:class:`RelayAborted`). The deadline the response
    carries still applies to every read.
    """

    def __init__(
        self, upstream: Upstream, pieces: list[bytes], size: int, limit: int, request_id: str
    ) -> None:
        self.upstream = upstream
        self._first = b"".join(pieces)
        self._size = size
        self._limit = limit
        self._request_id = request_id

    def __iter__(self) -> Iterator[bytes]:
        first, self._first = self._first, b""
        yield first
        size = self._size
        try:
            for piece in self.upstream.raw_chunks():
                size += len(piece)
                if size > self._limit:
                    self._abort(f"the answer exceeds routing.max_response_bytes ({self._limit})")
                yield piece
        except UPSTREAM_ERRORS as exc:
            if isinstance(exc, RelayAborted):
                raise
            if not isinstance(exc, TimeoutError):  # past the deadline: perhaps a slow client
                self.upstream.registry.record_failure(self.upstream.node)
            self._abort(f"the node broke off mid-body: {_short(exc)}")

    def _abort(self, why: str) -> None:
        log.warning(
            "cut the answer from node %s to the client: %s",
            self.upstream.node.id,
            why,
            extra={"request_id": self._request_id},
        )
        self.upstream.close(abort=True)
        raise RelayAborted(why)

    def close(self) -> None:
        """Called by the WSGI server at the end, or when the client is gone."""
        self.upstream.close()


#: The sweeper's report of a frozen node: the node, its stalled streams, the longest silence.
FrozenReport = Callable[[Node, int, float], Any]


class IdleWatchdog(Ticker):
    """Ends upstream streams whose node sent nothing for their idle timeout; notices stalls.

    A socket timeout on every read would do the same, but under gevent each
    wait with a timeout arms and disarms a timer, about a tenth of the relay's
    CPU per event; one sweep per ``tick_s`` over the open streams is cheaper.
    The sweep shuts the socket down, so the relay's blocked read fails and the
    relay sees a break with reason ``idle_timeout``.

    The same sweep compares each stream's silence with its rhythm
    (:class:`~spotrelay.router.stream.hedge.StallWatch`): a stalled stream's
    ``on_stall`` (its relay's hedger) is called, and when every stream open on
    a node stalls at once, and there are at least ``frozen_min_streams`` of
    them, ``on_frozen`` reports the node (the proxy ejects it).
    """

    name = "idle-watchdog"

    def __init__(
        self,
        tick_s: float = 1.0,
        *,
        frozen_min_streams: int = 0,
        on_frozen: FrozenReport | None = None,
    ) -> None:
        super().__init__(tick_s)
        self._watched: set[Upstream] = set()
        self.frozen_min_streams = frozen_min_streams
        self.on_frozen = on_frozen

    def watch(self, upstream: Upstream) -> None:
        self._watched.add(upstream)

    def unwatch(self, upstream: Upstream) -> None:
        self._watched.discard(upstream)

    def __len__(self) -> int:
        return len(self._watched)

    def sweep(self, now: float | None = None) -> list[Upstream]:
        """Interrupt every stream idle past its timeout; returns them."""
        now = monotonic() if now is None else now
        expired: list[Upstream] = []
        stalled: list[Upstream] = []
        per_node: dict[str, list[int]] = {}  # node id: [open streams, stalled streams]
        for up in list(self._watched):
            silent = now - up.last_activity
            if up.idle_s is not None and silent > up.idle_s:
                expired.append(up)
                continue
            counts = per_node.setdefault(up.node.id, [0, 0])
            counts[0] += 1
            if up.stall is not None and up.stall.stalled(silent):
                counts[1] += 1
                stalled.append(up)
        for up in expired:
            up.idle_timed_out = True
            self._watched.discard(up)
            up.resp.interrupt()
        for up in stalled:
            if up.on_stall is not None:
                up.on_stall(up)
        self._report_frozen(stalled, per_node, now)
        return expired

    def _report_frozen(
        self, stalled: list[Upstream], per_node: dict[str, list[int]], now: float
    ) -> None:
        if self.on_frozen is None or self.frozen_min_streams <= 0:
            return
        reported: set[str] = set()
        for up in stalled:
            node = up.node
            streams, stuck = per_node[node.id]
            if node.id in reported or streams < self.frozen_min_streams or stuck < streams:
                continue
            reported.add(node.id)
            longest = max(now - u.last_activity for u in stalled if u.node is node)
            self.on_frozen(node, streams, longest)

    def tick(self) -> None:
        self.sweep(time.monotonic())
