"""Talking to nodes: connection pools, open responses, failure classification, SSE framing.

One keep-alive pool per node (:class:`spotrelay.router.h1.Pool`, made when
the node registers, closed when it leaves). Pools connect to the address the
network policy vetted, presenting the registered host name as ``Host``/SNI.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

from .h1 import ConnectFailed, Pool, Response
from .netpolicy import NodeTarget
from .registry import Node, Registry
from .retry import FailureKind

DONE_PREFIX = b"data: [DONE]"

# Everything the node connection can raise: h1 raises OSError subclasses only.
UPSTREAM_ERRORS = (OSError,)


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
    resp: Response
    registry: Registry
    started: float
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
        try:
            if abort or not self.resp.complete:
                self.resp.close()
            else:
                self.resp.release()
        finally:
            self.registry.release(self.node)

    def set_read_timeout(self, seconds: float) -> None:
        """Change the socket timeout for the rest of the body (stream idle timeout)."""
        self.resp.set_timeout(seconds)

    def raw_chunks(self) -> Iterator[bytes]:
        """Body bytes as they arrive."""
        return self.resp.chunks()

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
