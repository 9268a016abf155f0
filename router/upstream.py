"""Talking to nodes: connection pools, open responses, failure classification, SSE framing.

One urllib3 ``HTTPConnectionPool`` per node (made when the node registers,
closed when it leaves) keeps upstream connections alive across requests;
``requests.Session`` costs too much per call for the hot path (DESIGN.md,
"Serving model, measured"). Pools connect to the address the network policy
vetted, presenting the registered host name as ``Host``/SNI.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from .netpolicy import NodeTarget
from .registry import Node, Registry
from .retry import FailureKind

DONE_PREFIX = b"data: [DONE]"
READ_SIZE = 65536


def make_pool(target: NodeTarget, maxsize: int) -> urllib3.HTTPConnectionPool:
    """A keep-alive pool for one node; never blocks (extra connections are not kept)."""
    common: dict[str, Any] = {"maxsize": maxsize, "block": False, "retries": False}
    if target.scheme == "https":
        if target.is_name:
            common.update(server_hostname=target.host, assert_hostname=target.host)
        return urllib3.HTTPSConnectionPool(target.address, target.port, **common)
    return urllib3.HTTPConnectionPool(target.address, target.port, **common)


def host_header(target: NodeTarget) -> str | None:
    """The ``Host`` to send when connecting to a resolved name (None: urllib3's default)."""
    if not target.is_name:
        return None
    default = 443 if target.scheme == "https" else 80
    return target.host if target.port == default else f"{target.host}:{target.port}"


def classify(exc: BaseException) -> tuple[FailureKind, str]:
    """What kind of failure an exception from urllib3 / the socket is."""
    if isinstance(exc, NewConnectionError):
        return FailureKind.CONNECT_ERROR, _short(exc)
    if isinstance(exc, ConnectTimeoutError):
        return FailureKind.CONNECT_TIMEOUT, _short(exc)
    if isinstance(exc, (ReadTimeoutError, socket.timeout, TimeoutError)):
        return FailureKind.FIRST_BYTE_TIMEOUT, _short(exc)
    return FailureKind.RESET, _short(exc)


UPSTREAM_ERRORS = (HTTPError, ProtocolError, OSError, http.client.HTTPException)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def is_error_event(event: bytes) -> bool:
    """An SSE event carrying an error object (vLLM's mid-stream failure report)."""
    if b"error" not in event[:48]:
        return False
    payload = event[5:].strip() if event.startswith(b"data:") else b""
    try:
        doc = json.loads(payload)
    except ValueError:
        return False
    return isinstance(doc, dict) and ("error" in doc or doc.get("object") == "error")


def error_event_message(event: bytes) -> str:
    try:
        doc = json.loads(event[5:].strip())
        err = doc.get("error", doc)
        return str(err.get("message", "")) if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        return ""


@dataclass(eq=False)
class Upstream:
    """An open upstream response; holds one in-flight lease on its node until closed."""

    node: Node
    resp: urllib3.BaseHTTPResponse
    registry: Registry
    started: float
    done: bool = False  # the upstream finished its body cleanly (connection reusable)
    _closed: bool = field(default=False, repr=False)

    def close(self, *, abort: bool = False) -> None:
        """Release the lease; close the connection unless the body completed.

        Closing the socket is how the engine learns the client is gone: vLLM
        aborts a request whose connection dropped, which frees its GPU slot.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if abort or not self.done:
                self.resp.close()
            self.resp.release_conn()
        except UPSTREAM_ERRORS:
            pass
        finally:
            self.registry.release(self.node)

    def set_read_timeout(self, seconds: float) -> None:
        """Change the socket timeout for the rest of the body (stream idle timeout)."""
        conn = getattr(self.resp, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)

    def raw_chunks(self) -> Iterator[bytes]:
        """Body bytes as they arrive: one HTTP chunk at a time, or whatever is readable."""
        resp = self.resp
        if resp.chunked and resp.supports_chunked_reads():  # type: ignore[attr-defined]
            for chunk in resp.read_chunked(decode_content=False):  # type: ignore[attr-defined]
                if chunk:
                    yield chunk
        else:
            while True:
                data = resp.read1(READ_SIZE, decode_content=False)  # type: ignore[attr-defined]
                if not data:
                    break
                yield data
        self.done = True

    def event_batches(self) -> Iterator[list[bytes]]:
        """Complete SSE events, grouped as they arrived (one list per upstream read).

        A partial event is never emitted: if the upstream breaks mid-event, the
        fragment is dropped, so what reached the client always ends on an event
        boundary (which stream resume relies on). Raises the upstream's errors.
        """
        buf = b""
        for chunk in self.raw_chunks():
            if not buf and chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == len(chunk) - 2:
                yield [chunk]  # the common case: one whole event per chunk
                continue
            buf += chunk
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            events = []
            start = 0
            while True:
                end = buf.find(b"\n\n", start)
                if end < 0:
                    break
                if end > start:
                    events.append(buf[start : end + 2])
                start = end + 2
            buf = buf[start:]
            if events:
                yield events
        if buf.strip().startswith(DONE_PREFIX):
            yield [buf.strip() + b"\n\n"]
