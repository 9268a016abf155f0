"""Relaying an SSE stream to the client: one loop for the first upstream and every continuation.

The proxy answers a stream once the upstream's first event is in hand (so
every failure before that stays an ordinary retry on another node).
:class:`StreamRelay` then forwards it event by event, without buffering.
After that the client has seen part of an answer, and an upstream failure
is a *break* (:class:`BreakReason`):

- the connection resets (``reset``), or no event arrives for
  ``timeouts.stream_idle_s`` (``idle_timeout``);
- the stream ends, with ``data: [DONE]`` or a clean end of the body, before
  every choice has a ``finish_reason`` (``truncated``, see :mod:`.finish`),
  or the body ends cleanly after the finish but without ``[DONE]`` (``eof``);
- the upstream sends an error event (``error_event``);
- the handler gives up on the upstream (``abandoned``: a malformed event,
  ``finish_reason: "abort"``);
- the router cut it because its node was lost (``node_lost``: expired,
  deleted, ``unhealthy``, ejected or frozen; see :mod:`.exchange`), or a
  hedge's continuation delivered first after it stalled (``stalled``).

A resumable stream has a :class:`~spotrelay.router.stream.hedging.Hedger`: when the
sweeper finds the upstream stalled, a continuation opens on another node
beside it; the relay hands every batch of the original to the client through
:meth:`~spotrelay.router.stream.hedging.Hedger.original_batch` (which cancels a
hedge the original beat, or drops the batch when the hedge won) and, after a
break, switches to the hedge's continuation instead of opening a new one.

The relay records every break in one place (``on_break``: metrics, passive
health, log), then asks the stream's :class:`StreamHandler` what to do. The
handler decides and does no I/O:

- ``on_event(event)`` sees every complete upstream event (``[DONE]``
  included) just before it goes to the client and returns the bytes to send
  instead (``None``: nothing). It may raise :class:`ClientStreamComplete`
  (the client stream is finished, e.g. a stop string completed across a seam)
  or :class:`AbandonUpstream` (drop this upstream and handle it as a break).
- ``on_break(brk)`` returns a :class:`Step`: bytes to send, then optionally
  a continuation body, which the relay opens on another node (``open_next``,
  the proxy's :meth:`~spotrelay.router.proxy.Proxy.open_continuation`) and
  relays with the same loop. ``on_open_failed(exc)`` answers a continuation
  that could not start.

The default, :class:`EndWithError`, passes events through unchanged and ends
a broken stream with one SSE error event in OpenAI error shape followed by
``data: [DONE]``, so clients fail cleanly instead of hanging or seeing a
truncated stream that looks complete.

Partial events are never sent: the client stream always ends on an event
boundary. When the client goes away, the generator is closed; the relay then
closes the current upstream connection, which makes vLLM abort the request.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

from ..transport.upstream import (
    UPSTREAM_ERRORS,
    Upstream,
    classify,
    error_event_message,
    is_error_event,
)
from .finish import FinishTracker
from .hedging import Hedger
from .sse import error_and_done, is_done


class BreakReason(StrEnum):
    RESET = "reset"  # connection reset / protocol error mid-body
    EOF = "eof"  # body ended without data: [DONE] (after every choice finished)
    TRUNCATED = "truncated"  # [DONE] or a clean end before every choice had a finish_reason
    IDLE_TIMEOUT = "idle_timeout"  # no event for timeouts.stream_idle_s
    ERROR_EVENT = "error_event"  # the upstream reported an error in-stream
    ABANDONED = "abandoned"  # the handler gave up on this upstream (AbandonUpstream)
    NODE_LOST = "node_lost"  # the router cut it: the node expired, left, hangs or froze
    STALLED = "stalled"  # a hedge's continuation delivered first (see .hedging)


@dataclass(frozen=True)
class StreamBreak:
    """An upstream stream that failed after data reached the client."""

    reason: BreakReason
    detail: str
    node_id: str
    events_sent: int  # events already relayed to the client (>= 1)
    error_event: bytes | None = None  # the upstream's own error event, for ERROR_EVENT
    node_failed: bool = True  # counts against the node (False: the router ended it)

    @property
    def why(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)


@dataclass
class StreamStart:
    """An upstream stream whose first event has arrived: ready to relay."""

    upstream: Upstream
    batches: Iterator[list[bytes]]  # positioned after first_batch
    first_batch: list[bytes]


@dataclass(frozen=True)
class Step:
    """A handler's answer to a break: send ``data``, then open ``body`` (None: the end).

    ``requires``: engine capabilities the continuation's node must report;
    ``error``: ``data`` ends the stream with the SSE error event.
    """

    data: bytes = b""
    body: dict[str, Any] | None = None
    requires: frozenset[str] = field(default_factory=frozenset)
    error: bool = False


class ClientStreamComplete(Exception):
    """Raised by ``on_event``: send ``data``, the client stream is complete."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__("client stream complete")
        self.data = data


class AbandonUpstream(Exception):
    """Raised by ``on_event``: send ``data``, then treat this upstream as broken.

    ``reason`` labels the break; ``node_failed`` False when the node did
    nothing wrong (the router itself ended the stream at a stop string).
    """

    def __init__(
        self,
        detail: str,
        data: bytes = b"",
        *,
        reason: BreakReason = BreakReason.ABANDONED,
        node_failed: bool = True,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data
        self.reason = reason
        self.node_failed = node_failed


class ContinuationRejected(Exception):
    """A continuation that no node will take for a reason another try would repeat
    (a 4xx such as a prompt now too long, no capable node, no capacity in time);
    ``outcome`` is the resume outcome it counts as."""

    def __init__(self, message: str, *, outcome: str = "failed") -> None:
        super().__init__(message)
        self.outcome = outcome


class StreamHandler(Protocol):
    """The per-stream strategy for events and breaks (see the module docstring)."""

    def on_event(self, event: bytes) -> bytes | None: ...

    def on_break(self, brk: StreamBreak) -> Step: ...

    def on_open_failed(self, exc: Exception) -> Step: ...


def broken_message(brk: StreamBreak) -> str:
    return f"the node serving this stream failed ({brk.why}); output incomplete"


class EndWithError:
    """Default handler: pass events through; a break ends the stream with an error event."""

    def on_event(self, event: bytes) -> bytes | None:
        return event

    def on_break(self, brk: StreamBreak) -> Step:
        return Step(error_and_done(broken_message(brk)), error=True)

    def on_open_failed(self, exc: Exception) -> Step:  # never opens a continuation
        return Step(error_and_done(f"continuation could not start: {exc}"), error=True)


Opener = Callable[[dict[str, Any], frozenset[str]], StreamStart]


class StreamRelay:
    """The client-side body of one streaming response (a WSGI iterable with ``close``).

    ``open_next(body, requires)`` opens a continuation (raises when it cannot);
    ``on_break(upstream, brk)`` records a break (the one place that does);
    ``finishes()`` makes the finish tracker for each upstream; ``on_finish(outcome)``
    runs exactly once with ``complete``, ``resumed`` (completed after a break),
    ``broken`` (ended with the error event), ``client_disconnect`` or ``not_started``.
    """

    def __init__(
        self,
        start: StreamStart,
        handler: StreamHandler,
        *,
        open_next: Opener,
        on_break: Callable[[Upstream, StreamBreak], None],
        on_finish: Callable[[str], None],
        finishes: Callable[[], FinishTracker] = lambda: FinishTracker(None),
        hedger: Hedger | None = None,
    ) -> None:
        self.start = start
        self.upstream = start.upstream
        self.handler = handler
        self.open_next = open_next
        self.on_break = on_break
        self.on_finish = on_finish
        self.finishes = finishes
        self.hedger = hedger  # hedges this stream when its upstream stalls (resumable streams)
        # EndWithError's on_event returns its input: skip the call per event.
        self.passthrough = getattr(type(handler), "on_event", None) is EndWithError.on_event
        self.events_sent = 0
        self.breaks = 0
        self.outcome = "not_started"
        self._cut = False  # the handler completed the client stream: stop reading
        self._finished = False
        self._gen = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def close(self) -> None:
        """Called by the WSGI server when the response ends or the client is gone."""
        self._gen.close()
        self._finish()

    def _run(self) -> Generator[bytes, None, None]:
        self.outcome = "relaying"
        start: StreamStart | None = self.start
        try:
            while start is not None:
                brk = yield from self._relay(start)
                if brk is None:
                    self.outcome = "resumed" if self.breaks else "complete"
                    return
                self.breaks += 1
                step = self.handler.on_break(brk)
                start = None
                while start is None:
                    if step.data:
                        yield step.data
                    if step.body is None:
                        self.outcome = "broken" if step.error else "resumed"
                        return
                    try:
                        start = self._take_hedge() or self.open_next(step.body, step.requires)
                    except Exception as exc:  # any failure to start is the handler's call
                        step = self.handler.on_open_failed(exc)
        except GeneratorExit:
            if self.outcome == "relaying":
                self.outcome = "client_disconnect"
            raise
        finally:
            self._finish()

    def _take_hedge(self) -> StreamStart | None:
        """A hedge's continuation to switch to, instead of opening a new one."""
        return self.hedger.take() if self.hedger is not None else None

    def _relay(self, start: StreamStart) -> Generator[bytes, None, StreamBreak | None]:
        """One upstream attempt; returns None when the client stream is complete, else the break."""
        up = self.upstream = start.upstream
        finishes = self.finishes()
        batch: list[bytes] | None = start.first_batch
        brk: StreamBreak | None = None
        done = False
        hedger = self.hedger
        if hedger is not None:
            up.on_stall = hedger.on_stall
        while batch is not None:
            if hedger is None:
                out, brk, done = self._process(batch, up, finishes, done)
            else:
                # Under the race's lock: a hedge begins from exactly what the client has.
                step = hedger.original_batch(partial(self._process, batch, up, finishes, done))
                if step is None:  # the continuation won: these events are stale
                    brk = self._stalled(up)
                    break
                out, brk, done = step
            if out:
                yield out
            if brk is not None or self._cut:
                break  # a cut upstream is closed (aborted) below, never drained
            try:
                batch = next(start.batches)
            except StopIteration:
                batch = None
                if not done:
                    brk = self._ended(up, finishes, None)
            except UPSTREAM_ERRORS as exc:
                batch = None
                if not done:
                    brk = self._ended(up, finishes, exc)
        if brk is None:
            up.close(abort=not up.done)
            return None
        up.close(abort=True)
        if brk.node_failed:
            self.on_break(up, brk)
        return brk

    def _process(
        self, batch: list[bytes], up: Upstream, finishes: FinishTracker, done: bool
    ) -> tuple[bytes, StreamBreak | None, bool]:
        """Client bytes for one upstream read, a break if it had one, and whether
        the client stream is done (nothing after ``[DONE]`` is part of the stream)."""
        if done:
            return b"", None, True
        out: list[bytes] = []
        for event in batch:
            if is_done(event):
                if not finishes.complete:
                    return b"".join(out), self._truncated(up, "data: [DONE]"), False
                done = True
            elif is_error_event(event):
                msg = error_event_message(event)
                reason = BreakReason.ERROR_EVENT
                return b"".join(out), self._break(reason, msg, up, error_event=event), False
            else:
                finishes.feed(event)
            if self.passthrough:
                out.append(event)
                self.events_sent += 1
            else:
                try:
                    sent = self.handler.on_event(event)
                except ClientStreamComplete as end:
                    out.append(end.data)
                    self._cut = True
                    return b"".join(out), None, True
                except AbandonUpstream as drop:
                    out.append(drop.data)
                    brk = self._break(drop.reason, drop.detail, up, node_failed=drop.node_failed)
                    return b"".join(out), brk, False
                if sent:
                    out.append(sent)
                    self.events_sent += 1
            if done:
                break
        return b"".join(out), None, done

    def _break(self, reason: BreakReason, detail: str, up: Upstream, **kw: Any) -> StreamBreak:
        return StreamBreak(reason, detail, up.node.id, self.events_sent, **kw)

    def _truncated(self, up: Upstream, end: str) -> StreamBreak:
        detail = f"{end} before every choice had a finish_reason"
        return self._break(BreakReason.TRUNCATED, detail, up)

    def _stalled(self, up: Upstream) -> StreamBreak:
        return self._break(BreakReason.STALLED, "a hedge on another node delivered first", up)

    def _ended(
        self, up: Upstream, finishes: FinishTracker, exc: BaseException | None
    ) -> StreamBreak:
        """The break for an upstream that ended (``exc`` None: cleanly) before ``[DONE]``."""
        if self.hedger is not None and self.hedger.won:
            return self._stalled(up)
        if up.cut_reason is not None:
            return self._break(BreakReason.NODE_LOST, up.cut_reason, up)
        if up.idle_timed_out:
            return self._break(BreakReason.IDLE_TIMEOUT, f"no data for {up.idle_s:g}s", up)
        if exc is None:
            if not finishes.complete:
                return self._truncated(up, "the end of the body")
            return self._break(BreakReason.EOF, "no data: [DONE]", up)
        kind, detail = classify(exc)
        reason = BreakReason.IDLE_TIMEOUT if kind.value.endswith("timeout") else BreakReason.RESET
        return self._break(reason, detail, up)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.hedger is not None:
            self.hedger.close()
        if self.outcome not in ("complete", "resumed"):
            self.upstream.close(abort=True)
        self.on_finish(self.outcome)
