"""Relaying an SSE stream to the client, and the seam for what happens when it breaks.

:class:`StreamRelay` forwards a streaming response event by event, without
buffering, once the proxy has the upstream's first event in hand (so every
failure before that stays an ordinary retry on another node). After that the
client has seen part of an answer, and an upstream failure is a *break*:

- the connection resets or the body ends without ``data: [DONE]``;
- the stream ends (``data: [DONE]`` or a clean end of the body) before every
  choice has a ``finish_reason`` (``truncated``: see :mod:`.finish`);
- no event arrives for ``timeouts.stream_idle_s``;
- the upstream sends an error event (``data: {"error": ...}``).

The resume seam
---------------
What to do about a break is not decided here but by a :class:`StreamHandler`
the proxy creates for each streaming request (``Proxy.stream_handler_factory``):

- ``on_event(event)`` sees every complete upstream event (bytes ending in a
  blank line, ``data: [DONE]`` included) just before it goes to the client and
  returns the bytes to send instead (or ``None`` to send nothing). A resuming
  handler records the text so far here and rewrites ids / usage.
  ``on_event`` may also raise :class:`ClientStreamComplete` (the client
  stream is finished, e.g. a stop string completed across a seam: send its
  ``data`` and stop reading) or :class:`AbandonUpstream` (drop this upstream
  and handle it as a break, e.g. a malformed event).
- ``on_broken(brk)`` is called once, after the broken upstream was closed and
  counted against its node, and yields the rest of the client stream. A
  resuming handler builds a continuation request (``ProxyRequest.derive``),
  opens it on another node with ``Proxy.acquire`` and relays it (a nested
  :class:`StreamRelay` with the same handler, or ``StreamStart.chunks()`` for
  a raw byte iterator).

The default, :class:`EndWithError`, passes events through unchanged and ends
a broken stream with one SSE error event in OpenAI error shape followed by
``data: [DONE]``, so clients fail cleanly instead of hanging or seeing a
truncated stream that looks complete.

Partial events are never sent: the client stream always ends on an event
boundary. When the client goes away, the generator is closed; the relay then
closes the upstream connection, which makes vLLM abort the request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from .finish import FinishTracker
from .sse import error_and_done
from .upstream import (
    DONE_PREFIX,
    UPSTREAM_ERRORS,
    Upstream,
    classify,
    error_event_message,
    is_error_event,
)


class BreakReason(StrEnum):
    RESET = "reset"  # connection reset / protocol error mid-body
    EOF = "eof"  # body ended without data: [DONE] (after every choice finished)
    TRUNCATED = "truncated"  # [DONE] or a clean end before every choice had a finish_reason
    IDLE_TIMEOUT = "idle_timeout"  # no event for timeouts.stream_idle_s
    ERROR_EVENT = "error_event"  # the upstream reported an error in-stream
    ABANDONED = "abandoned"  # the handler gave up on this upstream (AbandonUpstream)


@dataclass(frozen=True)
class StreamBreak:
    """An upstream stream that failed after data reached the client."""

    reason: BreakReason
    detail: str
    node_id: str
    events_sent: int  # events already relayed to the client (>= 1)
    error_event: bytes | None = None  # the upstream's own error event, for ERROR_EVENT


class ClientStreamComplete(Exception):
    """Raised by ``on_event``: send ``data``, the client stream is complete."""

    def __init__(self, data: bytes = b"") -> None:
        super().__init__("client stream complete")
        self.data = data


class AbandonUpstream(Exception):
    """Raised by ``on_event``: send ``data``, then treat this upstream as broken."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data


class StreamHandler(Protocol):
    """The per-stream strategy for events and breaks (see the module docstring)."""

    def on_event(self, event: bytes) -> bytes | None: ...

    def on_broken(self, brk: StreamBreak) -> Iterator[bytes]: ...


class EndWithError:
    """Default handler: pass events through; a break ends the stream with an error event."""

    def on_event(self, event: bytes) -> bytes | None:
        return event

    def on_broken(self, brk: StreamBreak) -> Iterator[bytes]:
        detail = f": {brk.detail}" if brk.detail else ""
        message = f"the node serving this stream failed ({brk.reason}{detail}); output incomplete"
        yield error_and_done(message)


class StreamRelay:
    """The client-side body of one streaming response (a WSGI iterable with ``close``).

    ``on_break(upstream, brk)`` lets the proxy count the failure against the
    node; ``on_finish(outcome)`` runs exactly once with ``complete``,
    ``broken``, ``client_disconnect`` or ``not_started``.
    """

    def __init__(
        self,
        upstream: Upstream,
        batches: Iterator[list[bytes]],
        first_batch: list[bytes],
        handler: StreamHandler,
        *,
        on_break: Callable[[Upstream, StreamBreak], None],
        on_finish: Callable[[str], None],
        finishes: FinishTracker | None = None,
    ) -> None:
        self.upstream = upstream
        self.finishes = finishes or FinishTracker(None)
        self.batches = batches
        self.first_batch = first_batch
        self.handler = handler
        self.on_break = on_break
        self.on_finish = on_finish
        self.events_sent = 0
        self.done_seen = False
        self.outcome = "not_started"
        self._finished = False
        self._gen = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._gen

    def close(self) -> None:
        """Called by the WSGI server when the response ends or the client is gone."""
        self._gen.close()
        self._finish()

    def _process(self, batch: list[bytes]) -> tuple[bytes, StreamBreak | None]:
        out: list[bytes] = []
        node_id = self.upstream.node.id
        for event in batch:
            if self.done_seen:
                continue  # nothing after [DONE] is part of the stream
            if event.startswith(DONE_PREFIX):
                if not self.finishes.complete:
                    return b"".join(out), self._truncated("data: [DONE]")
                self.done_seen = True
            elif is_error_event(event):
                msg = error_event_message(event)
                brk = StreamBreak(BreakReason.ERROR_EVENT, msg, node_id, self.events_sent, event)
                return b"".join(out), brk
            else:
                self.finishes.feed(event)
            try:
                sent = self.handler.on_event(event)
            except ClientStreamComplete as end:
                out.append(end.data)
                self.done_seen = True
                continue
            except AbandonUpstream as drop:
                out.append(drop.data)
                brk = StreamBreak(BreakReason.ABANDONED, drop.reason, node_id, self.events_sent)
                return b"".join(out), brk
            if sent:
                out.append(sent)
                self.events_sent += 1
        return b"".join(out), None

    def _break_for(self, exc: BaseException | None) -> StreamBreak:
        node_id = self.upstream.node.id
        if self.upstream.idle_timed_out:
            detail = f"no data for {self.upstream.idle_s:g}s"
            return StreamBreak(BreakReason.IDLE_TIMEOUT, detail, node_id, self.events_sent)
        if exc is None:
            if not self.finishes.complete:
                return self._truncated("the end of the body")
            return StreamBreak(BreakReason.EOF, "no data: [DONE]", node_id, self.events_sent)
        kind, detail = classify(exc)
        reason = BreakReason.IDLE_TIMEOUT if kind.value.endswith("timeout") else BreakReason.RESET
        return StreamBreak(reason, detail, node_id, self.events_sent)

    def _truncated(self, end: str) -> StreamBreak:
        detail = f"{end} before every choice had a finish_reason"
        return StreamBreak(BreakReason.TRUNCATED, detail, self.upstream.node.id, self.events_sent)

    def _run(self) -> Iterator[bytes]:
        brk: StreamBreak | None = None
        self.outcome = "relaying"
        try:
            batch = self.first_batch
            while True:
                out, brk = self._process(batch)
                if out:
                    yield out
                if brk is not None:
                    break
                try:
                    batch = next(self.batches)
                except StopIteration:
                    if not self.done_seen:
                        brk = self._break_for(None)
                    break
                except UPSTREAM_ERRORS as exc:
                    if not self.done_seen:
                        brk = self._break_for(exc)
                    break
            if brk is None:
                self.outcome = "complete"
                self.upstream.close(abort=not self.upstream.done)
                return
            self.outcome = "broken"
            self.upstream.close(abort=True)
            self.on_break(self.upstream, brk)
            yield from self.handler.on_broken(brk)
        except GeneratorExit:
            if self.outcome in ("relaying", "broken"):
                self.outcome = "client_disconnect"
            raise
        finally:
            self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self.outcome != "complete":
            self.upstream.close(abort=True)
        self.on_finish(self.outcome)
