"""What the proxy passes around: the request on its way to a node, and what comes back.

:class:`ProxyRequest` is one parsed client request (made by
:class:`~spotrelay.router.dataplane.DataPlane`, or :func:`parse_request` in
tests); :class:`Answer` a non-streaming upstream answer; :class:`ApiError` an
error for the client in OpenAI's shape; :class:`ProxyResponse` what the web
layer sends.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from spotrelay.core.errors import openai_error
from spotrelay.core.logs import clip

from ..endpoints import StreamKind
from ..stream.assemble import StreamForm
from ..stream.disconnect import ClientLink
from ..stream.relay import StreamHandler
from ..tracing import NO_TRACE, RequestTrace
from ..transport.upstream import BodyRelay

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
ACCEPT_RE = re.compile(r"^[\x20-\x7e]{1,256}$")
CLIENT_CLOSED = 499  # nginx's status for "client closed request": metrics and logs only


class ApiError(Exception):
    """A data-plane error to return to the client in OpenAI error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        doc = openai_error(self.status, self.message, param=self.param, code=self.code)
        return json.dumps(doc).encode()


class ClientLeft(ApiError):
    """The client disconnected while its request waited on a node; nobody gets the answer."""

    def __init__(self) -> None:
        super().__init__(CLIENT_CLOSED, "client closed the connection", code="client_disconnect")


@dataclass
class ProxyRequest:
    """A parsed client request on its way to a node."""

    request_id: str
    path: str
    body: bytes
    doc: dict[str, Any]
    model: str
    stream: bool
    received: float
    deadline: float
    session_key: str | None = None
    accept: str | None = None
    method: str = "POST"
    content_type: str = "application/json"  # multipart uploads keep the client's, boundary and all
    stream_kind: StreamKind = StreamKind.OPENAI  # a stream's framing: picks its handler
    # The stream's handler, made by the proxy's one factory before the first attempt:
    # it also says when an upstream stream has started (see StreamHandler.opening).
    handler: StreamHandler | None = None
    ask_each: bool = False  # state one node holds (a stored response): ask every node in turn
    tried: set[str] = field(default_factory=set)
    attempts: int = 0
    node_id: str | None = None  # the node that answered
    hops: tuple[str, ...] = ()  # X-Spotrelay-Hop as received: routers already passed
    client: ClientLink | None = None  # the client connection, to abort work when it leaves
    requires: frozenset[str] = frozenset()  # engine capabilities a node must report
    resume_off: bool = False  # the client sent X-Spotrelay-Resume: off
    follow_up: bool = False  # made by derive(): waits for a node it has not tried yet
    long_hint: bool = False  # the client marked it long (routing.long_request_header)
    # Non-streaming, to be asked as this stream on nodes whose engine kind is in
    # routing.assemble_non_streaming (the answer assembled by router/stream/assembly.py).
    assembly: StreamForm | None = None
    trace: RequestTrace = NO_TRACE  # OpenTelemetry spans when tracing is on (router/tracing.py)

    def derive(
        self,
        doc: dict[str, Any],
        *,
        exclude: set[str] | None = None,
        requires: frozenset[str] = frozenset(),
    ) -> ProxyRequest:
        """A follow-up request (e.g. a stream continuation) with a new body.

        Same request id, deadline and stream handler; attempts start from zero;
        ``exclude`` (default: every node tried so far) are not picked, nor nodes
        whose engine lacks a capability in ``requires``. When every routable node
        was tried, it waits for capacity like a new request finding no node (a
        replacement for the node that broke is usually seconds away).
        """
        return replace(
            self,
            body=json.dumps(doc).encode(),
            doc=doc,
            stream=doc.get("stream") is True,
            tried=set(self.tried if exclude is None else exclude),
            attempts=0,
            node_id=None,
            requires=requires,
            follow_up=True,
            assembly=None,
        )

    def wanted(self) -> str:
        """What it asks for, in an error message."""
        return f"model {clip(self.model)!r}" if self.model else "any model"


@dataclass
class ProxyResponse:
    """What the web layer sends: a status, a body (bytes or an iterable) and headers."""

    status: int
    body: bytes | Iterable[bytes]
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    """A non-streaming upstream answer: read in full (``bytes``), or a :class:`BodyRelay`
    for a 2xx answer over ``routing.response_buffer_bytes`` (close it if not sent)."""

    status: int
    body: bytes | BodyRelay
    content_type: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)
    outcome: str = "complete"  # for the access log: "resumed" when assembled across a break

    def message(self) -> str:
        """Its status and error message, for a log line (a relayed body is closed)."""
        if isinstance(self.body, BodyRelay):
            self.body.close()
            return str(self.status)
        try:
            err = json.loads(self.body).get("error")
            if isinstance(err, dict) and err.get("message"):
                return f"{self.status}: {err['message']}"
        except (ValueError, AttributeError):
            pass
        return str(self.status)


def request_id_from(header: str | None) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    if header and REQUEST_ID_RE.match(header):
        return header
    return os.urandom(16).hex()


def parse_request(
    path: str,
    body: bytes,
    *,
    request_id: str,
    received: float,
    deadline_s: float,
    session_key: str | None = None,
    accept: str | None = None,
    default_model: Callable[[], str] | None = None,
    streamable: bool | None = None,
    resume_off: bool = False,
) -> ProxyRequest:
    """Validate a client body; raises :class:`ApiError` (400) for what no node could serve.

    ``default_model`` names the model for a body without one (vLLM serves its
    own then); ``streamable`` False: ``stream`` is ignored (default: every path
    but embeddings streams on request).
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    model = doc.get("model")
    if model is None and default_model is not None:
        model = default_model()
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (a non-empty string)", param="model")
    if streamable is None:
        streamable = not path.endswith("/embeddings")
    stream = streamable and doc.get("stream") is True
    return ProxyRequest(
        request_id=request_id,
        path=path,
        body=body,
        doc=doc,
        model=model,
        stream=stream,
        received=received,
        deadline=received + deadline_s,
        session_key=session_key or None,
        accept=accept if accept and ACCEPT_RE.match(accept) else None,
        resume_off=resume_off,
    )
