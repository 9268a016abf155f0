"""Streams of *named* SSE events (Responses API, Anthropic Messages): when they are complete.

Chat and completions streams end with ``data: [DONE]``; these do not. vLLM
frames them as ``event: <type>`` + ``data: <json>`` and ends the body after a
terminal event: ``response.completed`` (or the engine's own
``response.failed`` / ``response.incomplete``) for the Responses API,
``message_stop`` for Anthropic Messages. A body that ends before one, resets,
or idles out is a *break*, exactly as for chat streams.

The router has one relay loop (:class:`spotrelay.router.stream.relay.StreamRelay`),
which knows one end-of-stream sentinel. Rather than a second loop,
:meth:`NamedEvents.frame` appends that sentinel after the terminal event of
each upstream read, and :class:`NamedEventHandler` never sends it to the
client: the relay then treats a named-event stream like any other, and all
its break handling (resets, idle timeouts, passive health, metrics, client
disconnects) applies unchanged.

A break after the first byte ends the client stream with an error event in
the protocol's own shape (a Responses ``error`` event with the next
``sequence_number``, or an Anthropic ``error`` event), never a silent cut.
Such streams are not resumed: see docs/router.md ("Responses API streams").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .relay import AbandonUpstream, Step, StreamBreak, StreamHandler, StreamStart, broken_message
from .sse import BROKEN_CODE, DONE_EVENT, data_json, encode_named, field, is_done

if TYPE_CHECKING:
    from ..proxy import Proxy, ProxyRequest

HandlerFactory = Callable[["ProxyRequest", "Proxy"], StreamHandler]

_SEQUENCE = re.compile(rb'"sequence_number"\s*:\s*(\d+)')


def event_name(event: bytes) -> bytes:
    """The ``event:`` field of one framed SSE event, else the ``type`` of its JSON data."""
    name = field(event, b"event")
    if name is not None:
        return name
    kind = _data(event).get("type")
    return kind.encode() if isinstance(kind, str) else b""


def _data(event: bytes) -> dict:
    doc = data_json(event, leading=False)
    return doc if isinstance(doc, dict) else {}


def _responses_error(message: str, sequence_number: int) -> bytes:
    doc = {
        "type": "error",
        "code": BROKEN_CODE,
        "message": message,
        "param": None,
        "sequence_number": sequence_number,
    }
    return encode_named("error", doc)


def _anthropic_error(message: str, sequence_number: int) -> bytes:
    doc = {"type": "error", "error": {"type": "api_error", "message": message}}
    return encode_named("error", doc)


def _message_of(doc: dict) -> str:
    err = doc.get("error")
    if isinstance(err, dict):
        doc = err
    message = doc.get("message")
    return str(message) if message else "the engine reported an error"


@dataclass(frozen=True)
class NamedEvents:
    """One named-event protocol: its terminal events and its error event."""

    name: str
    terminal: frozenset[bytes]
    preamble: frozenset[bytes]  # sent before prefill: not yet the answer's first byte
    error_event: Callable[[str, int], bytes]

    def is_error(self, event: bytes) -> bool:
        """An engine's in-stream error report (before the first byte: retried elsewhere)."""
        return b"error" in event[:64] and event_name(event) == b"error"

    def error_message(self, event: bytes) -> str:
        return _message_of(_data(event))

    def first_output(
        self, first: list[bytes], batches: Iterator[list[bytes]]
    ) -> tuple[list[bytes] | None, str | None]:
        """The stream's events up to its first real output, and the engine's error if any.

        vLLM sends ``response.created`` / ``response.in_progress`` (Anthropic:
        ``message_start``, ``ping``) before prefill. Holding them back until the
        first other event keeps a node that dies during prefill an ordinary
        retry on another node: the client has seen nothing. ``(None, None)``:
        the stream ended before any output. Raises the upstream's errors.
        """
        events = list(first)
        while all(event_name(e) in self.preamble for e in events):
            more = next(batches, None)
            if more is None:
                return None, None
            events.extend(more)
        for event in events:
            if self.is_error(event):
                return events, self.error_message(event)
        return events, None

    def frame(self, batch: list[bytes]) -> list[bytes]:
        """One upstream read, with the relay's end sentinel after a terminal event.

        An upstream ``data: [DONE]`` is dropped: it ends nothing in these protocols.
        """
        out: list[bytes] = []
        for event in batch:
            if is_done(event):
                continue
            out.append(event)
            if event_name(event) in self.terminal:
                out.append(DONE_EVENT)
        return out

    def framed(self, batches: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
        for batch in batches:
            yield self.frame(batch)


RESPONSES = NamedEvents(
    "responses",
    frozenset({b"response.completed", b"response.failed", b"response.incomplete"}),
    frozenset({b"response.created", b"response.in_progress"}),
    _responses_error,
)
ANTHROPIC = NamedEvents(
    "anthropic",
    frozenset({b"message_stop"}),
    frozenset({b"message_start", b"ping"}),
    _anthropic_error,
)


class NamedEventHandler:
    """The stream handler for a named-event stream: pass through, end a break with an error.

    Tracks the last ``sequence_number`` so the error event continues the
    numbering the client has seen.
    """

    def __init__(self, protocol: NamedEvents) -> None:
        self.protocol = protocol
        self.last_sequence = -1

    def frame_start(self, start: StreamStart) -> StreamStart:
        """The stream as the relay reads it: the end sentinel after each terminal event."""
        events = self.protocol
        return StreamStart(
            start.upstream, events.framed(start.batches), events.frame(start.first_batch)
        )

    def on_event(self, event: bytes) -> bytes | None:
        if event is DONE_EVENT or is_done(event):
            return None  # the end sentinel frame() added: not part of this protocol
        if self.protocol.is_error(event):
            # The engine failed mid-stream: one error event, ours, ends the client stream.
            raise AbandonUpstream(f"engine error: {self.protocol.error_message(event)}")
        m = _SEQUENCE.search(event)
        if m:
            self.last_sequence = int(m.group(1))
        return event

    def on_break(self, brk: StreamBreak) -> Step:
        """The end of the client stream: one error event, no continuation."""
        return Step(
            self.protocol.error_event(broken_message(brk), self.last_sequence + 1), error=True
        )

    def on_open_failed(self, exc: Exception) -> Step:  # never opens a continuation
        return Step(
            self.protocol.error_event(f"stream failed: {exc}", self.last_sequence + 1), error=True
        )


def with_named_events(chat: HandlerFactory) -> HandlerFactory:
    """The proxy's one stream handler factory: a named-event stream gets its protocol's
    handler, every other stream ``chat``'s (resume, or end with an error event)."""

    def make(req: ProxyRequest, proxy: Proxy) -> StreamHandler:
        if req.events is not None:
            return NamedEventHandler(req.events)
        return chat(req, proxy)

    return make
