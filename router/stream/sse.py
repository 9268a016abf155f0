"""Server-Sent Events: the one framer, event parsing and serialisation.

Every piece of the stream path sees SSE through this module: the upstream
batching (:meth:`spotrelay.router.transport.upstream.Upstream.event_batches`), the
resumer and the tests.

Framing (:class:`SSEFramer`) is byte-level and incremental. Upstream bytes
arrive in arbitrary pieces (a TCP read can end in the middle of an event, a
line, a ``\\r\\n`` pair or a multi-byte UTF-8 character), so the framer keeps
state between :meth:`SSEFramer.feed` calls and returns only complete events,
as raw bytes with every line end (``\\r\\n``, ``\\n`` or a lone ``\\r``)
normalised to ``\\n`` and one blank line at the end. Bytes are never decoded
while framing, so a split character is never an issue.

**The final-event rule.** An event is complete at its blank line. A final
event without one (the body ended right after its last line) is dispatched
by :meth:`SSEFramer.end`, which the reader calls only at a *clean* end of the
body: HTTP said the body is whole, so the event is too. When the body broke
instead, :meth:`~SSEFramer.end` is not called and the fragment is dropped:
a partial event never reaches the client, so a client stream always ends on
an event boundary (which stream resume relies on).

:func:`parse_event` reads one framed event's fields (WHATWG rules that
matter for OpenAI-style streams: ``:`` comments, several ``data:`` lines
joined with ``\\n``, one optional space after the colon).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from spotrelay.core.errors import openai_error

#: The OpenAI end-of-stream sentinel, the one spelling of it in the project.
DONE = b"[DONE]"
#: ``data: [DONE]`` as an engine usually writes it (the fast check in :func:`is_done`).
DONE_LINE = b"data: " + DONE
#: The ``[DONE]`` event as the router sends it.
DONE_EVENT = DONE_LINE + b"\n\n"
#: The error code of every in-stream error the router writes when a stream breaks
#: (chat error events, named-event error events, a broken assembled answer).
BROKEN_CODE = "upstream_stream_broken"


@dataclass(frozen=True)
class SSEEvent:
    """One event's fields: ``data`` (lines joined by ``\\n``), ``event`` and ``id``."""

    data: str
    event: str | None = None
    id: str | None = None

    @property
    def is_done(self) -> bool:
        """The OpenAI end-of-stream sentinel ``data: [DONE]``."""
        return self.data.strip() == DONE.decode()

    def json(self) -> Any:
        """The data parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.data)


class EventTooLarge(ValueError):
    """An event grew past the framer's ``max_event`` bytes before its blank line."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an SSE event reached {size} bytes without its end (limit {limit})")
        self.size = size
        self.limit = limit


class SSEFramer:
    """Splits a byte stream into complete raw events (see the module docstring).

    Linear time: the bytes of an incomplete event are kept as a list of
    pieces and joined once, when a piece brings the blank line that ends it;
    each piece is scanned for ``\n\n`` once, on arrival. (The first version
    re-joined and re-scanned its whole buffer on every read: 28 s of CPU for
    one engine's 50 MB without a newline.) ``max_event``, when set, bounds
    what the framer buffers: an event assembled from several pieces, or an
    incomplete one, past it raises :class:`EventTooLarge`, so a newline-free
    byte stream costs at most that much memory. A piece holding exactly one
    whole event is passed on unmeasured (the relay's hot path): the reader's
    read size (64 KiB, below the smallest allowed ``routing.max_event_bytes``)
    bounds it. Bytes that complete no event return ``[]``: only a non-empty
    answer from :meth:`feed` is progress, however many bytes arrived.
    """

    __slots__ = ("_cr", "_max", "_parts", "_size")

    def __init__(self, max_event: int | None = None) -> None:
        self._parts: list[bytes] = []  # the incomplete event's bytes, in arrival order
        self._size = 0  # their total length
        self._cr = False  # the last piece ended in '\r': a '\n' next is the same line end
        self._max = max_event or sys.maxsize

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk``; return the events it completed (possibly none).

        Raises :class:`EventTooLarge` past ``max_event`` (the framer is then spent).
        """
        if self._cr or b"\r" in chunk:
            chunk = self._normalise(chunk)
        parts = self._parts
        if not parts:
            end = chunk.find(b"\n\n")
            if end == len(chunk) - 2 and end > 0 and chunk[0] != 10:
                return [chunk]  # the common case: a read holding exactly one whole event
            if end < 0:
                if chunk:
                    parts.append(chunk)
                    self._size = len(chunk)
                    if self._size > self._max:
                        raise EventTooLarge(self._size, self._max)
                return []
            buf = chunk
        elif b"\n\n" in chunk or (chunk[:1] == b"\n" and parts[-1][-1] == 10):
            # An event ends in this piece (or at its seam with the last): join once.
            buf = parts[0] + chunk if len(parts) == 1 else b"".join([*parts, chunk])
        elif chunk:
            return self._keep(chunk)
        else:
            return []
        events: list[bytes] = []
        start = 0
        limit = self._max
        checked = len(buf) > limit  # a shorter buffer cannot hold an event over the limit
        while True:
            while buf.startswith(b"\n", start):  # blank lines between events
                start += 1
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            if checked and end + 2 - start > limit:
                raise EventTooLarge(end + 2 - start, limit)
            events.append(buf[start : end + 2])
            start = end + 2
        if start < len(buf):
            rest = buf[start:]
            self._parts = [rest]
            self._size = len(rest)
            if self._size > limit:
                raise EventTooLarge(self._size, limit)
        elif parts:
            self._parts = []
            self._size = 0
        return events

    def _keep(self, chunk: bytes) -> list[bytes]:
        """No event ends in ``chunk``: keep it with the incomplete event."""
        self._parts.append(chunk)
        self._size += len(chunk)
        if self._size > self._max:
            raise EventTooLarge(self._size, self._max)
        return []

    def end(self) -> list[bytes]:
        """At a clean end of the body: the unterminated final event, if any."""
        tail = b"".join(self._parts).rstrip(b"\n")
        self._parts, self._size, self._cr = [], 0, False
        return [tail + b"\n\n"] if tail else []

    @property
    def pending(self) -> bool:
        """True while part of an event is buffered."""
        return bool(self._parts)

    @property
    def pending_bytes(self) -> int:
        """How much of an incomplete event is buffered (bounded by ``max_event``)."""
        return self._size

    def _normalise(self, chunk: bytes) -> bytes:
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the second half of a '\r\n' split across reads
        self._cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def parse_event(raw: bytes) -> SSEEvent | None:
    """The fields of one framed event; None for an event without data (e.g. a comment)."""
    data: list[str] = []
    event = id_ = None
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            id_ = value
        # "retry" and unknown fields are ignored, as the spec says.
    return SSEEvent("\n".join(data), event, id_) if data else None


def event_data(raw: bytes) -> bytes | str | None:
    """The data of one framed event: bytes for the usual single ``data: `` line (no copy
    through :func:`parse_event`), else the parsed string; None when it carries none."""
    if raw.startswith(b"data: ") and raw.find(b"\n") == len(raw) - 2:
        return raw[6:-2]
    event = parse_event(raw)
    return None if event is None else event.data


def data_json(raw: bytes, *, leading: bool = True) -> Any:
    """The JSON of one framed event's ``data:`` line; None when there is none or it is not JSON.

    ``leading`` (the chat streams' hot path): only an event that *begins* with
    its ``data:`` line counts, read without decoding the rest. Otherwise the
    first ``data:`` line anywhere (named events put ``event:`` first).
    """
    if leading:
        payload = raw[5:] if raw.startswith(b"data:") else b""
    else:
        payload = field(raw, b"data") or b""
    try:
        return json.loads(payload)
    except ValueError:
        return None


def field(raw: bytes, name: bytes) -> bytes | None:
    """The value of the first ``name:`` line of one framed event (stripped); None if absent."""
    prefix = name + b":"
    for line in raw.split(b"\n"):
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def is_json_line(raw: bytes) -> bool:
    """One framed event that is a single ``data: {...}`` line: the chat chunk shape the
    relay's fast paths handle without parsing (anything else is read in full)."""
    return raw.startswith(b"data: {") and raw.find(b"\n") == len(raw) - 2


def is_done(raw: bytes) -> bool:
    """A framed event is ``data: [DONE]``."""
    if raw.startswith(DONE_LINE):
        return raw[len(DONE_LINE) :].strip() == b""
    data = event_data(raw)
    return data is not None and (data.strip() == DONE or data.strip() == DONE.decode())


class SSEParser:
    """Framer plus :func:`parse_event`: a byte stream in, :class:`SSEEvent` objects out.

    For readers that want fields, not raw events (tests, SSE clients). ``end()``
    follows the framer's final-event rule.
    """

    __slots__ = ("_framer",)

    def __init__(self) -> None:
        self._framer = SSEFramer()

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return _parsed(self._framer.feed(chunk))

    def end(self) -> list[SSEEvent]:
        return _parsed(self._framer.end())

    @property
    def pending(self) -> bool:
        return self._framer.pending


def _parsed(raws: list[bytes]) -> list[SSEEvent]:
    return [e for e in map(parse_event, raws) if e is not None]


def encode_data(data: str) -> bytes:
    """One event carrying ``data`` (multi-line data becomes several ``data:`` lines)."""
    if "\n" not in data and "\r" not in data:
        return b"data: " + data.encode("utf-8") + b"\n\n"
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode("utf-8") + b"\n"


def encode_json(obj: Any) -> bytes:
    """One event whose data is ``obj`` as compact JSON (the shape vLLM emits)."""
    return encode_data(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def encode_named(kind: str, obj: Any) -> bytes:
    """One named event: ``event: <kind>`` and ``obj`` as JSON (the Responses and
    Anthropic Messages framing, as vLLM writes it)."""
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def error_event(message: str, *, status: int = 502, code: str | None = BROKEN_CODE) -> bytes:
    """An in-stream error in OpenAI error shape; the OpenAI SDKs raise it as ``APIError``."""
    return encode_json(openai_error(status, message, code=code))


def error_and_done(message: str, **kwargs: Any) -> bytes:
    """The clean end of a stream that cannot continue: error event, then ``[DONE]``."""
    return error_event(message, **kwargs) + DONE_EVENT
