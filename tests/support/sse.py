"""Reading Server-Sent Events bodies in tests, with the router's own parser (router/stream/sse.py).

``source`` is a body (bytes), the chunks of one as read, or a streamed
``requests.Response`` (read to its end). A stream cut mid-body raises, unless
``cut_ok``: then the events before the cut are returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import requests

from spotrelay.router.stream.sse import SSEEvent, SSEParser


class _Streamed(Protocol):
    def iter_content(self, chunk_size: int | None = ...) -> Iterable[bytes]: ...


Source = bytes | Iterable[bytes] | _Streamed


def sse_events(source: Source, *, cut_ok: bool = False) -> list[SSEEvent]:
    """Every event in ``source``, in order."""
    if isinstance(source, bytes):
        chunks: Iterable[bytes] = [source]
    elif hasattr(source, "iter_content"):
        chunks = source.iter_content(chunk_size=None)
    else:
        chunks = source
    parser, out = SSEParser(), []
    try:
        for chunk in chunks:
            out.extend(parser.feed(chunk))
    except requests.exceptions.ChunkedEncodingError:
        if not cut_ok:
            raise
        return out
    return out + parser.end()


def sse_data(source: Source, *, cut_ok: bool = False) -> list[str]:
    """The ``data`` of every event (``"[DONE]"`` included)."""
    return [e.data for e in sse_events(source, cut_ok=cut_ok)]


def sse_json(source: Source, *, cut_ok: bool = False) -> list[Any]:
    """Every event's data parsed as JSON; the ``[DONE]`` sentinel kept as that string."""
    return [e.data if e.is_done else e.json() for e in sse_events(source, cut_ok=cut_ok)]


def sse_named(source: Source, *, cut_ok: bool = False) -> list[dict[str, Any]]:
    """Named events (the Responses and Anthropic streams) as ``{"event": name, **data}``."""
    return [{"event": e.event, **e.json()} for e in sse_events(source, cut_ok=cut_ok)]
