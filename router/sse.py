"""Incremental Server-Sent Events parsing and serialisation.

Upstream bytes arrive in arbitrary pieces (a TCP read can end in the middle
of an event, a line, or a multi-byte UTF-8 character), so the parser keeps
state between :meth:`SSEParser.feed` calls and only returns complete events.
It follows the WHATWG event-stream rules that matter for OpenAI-style
streams: ``\\r\\n``, ``\\n`` or ``\\r`` line ends, ``:`` comments, several
``data:`` lines joined with ``\\n``, one optional space after the colon, and
an unterminated event at end of stream is discarded (it never reached the
client as a whole, so it does not count).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from spotrelay.core.errors import openai_error

DONE = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its ``data`` (lines joined by ``\\n``) and optional fields."""

    data: str
    event: str | None = None
    id: str | None = None

    @property
    def is_done(self) -> bool:
        """The OpenAI end-of-stream sentinel ``data: [DONE]``."""
        return self.data.strip() == DONE

    def json(self) -> Any:
        """The data parsed as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.data)


class SSEParser:
    """Turns a byte stream into :class:`SSEEvent` objects, piece by piece."""

    __slots__ = ("_buf", "_data", "_event", "_id")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed (possibly none)."""
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        pos = 0
        end = len(buf)
        for m in _LINE_END.finditer(buf):
            # A lone '\r' at the very end may be the first half of '\r\n': wait for more.
            if m.group() == b"\r" and m.end() == end:
                break
            self._line(buf[pos : m.start()], events)
            pos = m.end()
        self._buf = buf[pos:]
        return events

    @property
    def pending(self) -> bool:
        """True while a partial line or an undispatched event is buffered."""
        return bool(self._buf) or bool(self._data)

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event, self._id))
            self._data = []
            self._event = None
            return
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        # "retry" and unknown fields are ignored, as the spec says.


def encode_data(data: str) -> bytes:
    """One event carrying ``data`` (multi-line data becomes several ``data:`` lines)."""
    if "\n" not in data and "\r" not in data:
        return b"data: " + data.encode("utf-8") + b"\n\n"
    lines = _LINE_END.split(data.encode("utf-8"))
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def encode_json(obj: Any) -> bytes:
    """One event whose data is ``obj`` as compact JSON (the shape vLLM emits)."""
    return encode_data(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))


def error_event(
    message: str, *, status: int = 502, code: str | None = "upstream_stream_broken"
) -> bytes:
    """An in-stream error in OpenAI error shape; the OpenAI SDKs raise it as ``APIError``."""
    return encode_json(openai_error(status, message, code=code))


def error_and_done(message: str, **kwargs: Any) -> bytes:
    """The clean end of a stream that cannot continue: error event, then ``[DONE]``."""
    return error_event(message, **kwargs) + DONE_EVENT
