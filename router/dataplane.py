"""Turning one client request for any endpoint of the table into a :class:`ProxyRequest`.

The Flask layer reads the body (with the size limit) and checks the API
key; this class decides, from the endpoint's row in
:mod:`spotrelay.router.endpoints`, how the body is read (JSON, or the
``model``/``stream`` fields of a multipart form), which model routes it (the
body's, or the fleet's only model when the body names none, as vLLM
defaults to its served model), whether it streams and in which framing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from .endpoints import BodyKind, Endpoint, Routing, StreamKind
from .proxy import ACCEPT_RE, ApiError, ProxyRequest, parse_request
from .registry.state import Registry
from .stream.assemble import StreamForm, not_assembled
from .stream.named_events import ANTHROPIC, RESPONSES, NamedEvents
from .transport.multipart import MAX_PARTS, MultipartError, boundary_of, form_fields

_EVENTS: dict[StreamKind, NamedEvents] = {
    StreamKind.RESPONSES: RESPONSES,
    StreamKind.ANTHROPIC: ANTHROPIC,
}
_CONTENT_TYPE_RE = re.compile(r"^[\x20-\x7e]{1,256}$")
_FORM_FIELDS = frozenset({"model", "stream"})
_STORED_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,256}$")
_QUERY_RE = re.compile(r"^[A-Za-z0-9_.=&%-]{0,512}$")
_TRUE = frozenset({"true", "1", "yes", "on"})


@dataclass(frozen=True)
class Incoming:
    """What the web layer hands over about one data-plane request."""

    method: str
    path: str
    body: bytes
    content_type: str | None
    request_id: str
    received: float
    session_key: str | None = None
    accept: str | None = None
    query: str = ""  # the raw query string (forwarded for stored responses only)
    path_args: tuple[str, ...] = ()  # the rule's path parameters (a response id)


class DataPlane:
    """Builds proxy requests; the only model-resolution and body-kind logic of the router."""

    def __init__(
        self,
        registry: Registry,
        *,
        deadline_s: float,
        no_capacity_wait_s: float,
        retry_after_s: float,
        max_form_parts: int = MAX_PARTS,
        clock: Callable[[], float] = time.monotonic,
        assemble_kinds: tuple[str, ...] = (),
    ) -> None:
        self.registry = registry
        self.assemble_kinds = assemble_kinds
        self.max_form_parts = max_form_parts
        self.deadline_s = deadline_s
        self.no_capacity_wait_s = no_capacity_wait_s
        self.retry_after_s = retry_after_s
        self.clock = clock

    def request(self, ep: Endpoint, inc: Incoming) -> ProxyRequest:
        """The proxy request for ``inc`` on ``ep``; raises :class:`ApiError` for a bad one."""
        if ep.routing is Routing.ANY_NODE:
            req = self._plain(inc, model="", stream=False)
        elif ep.routing is Routing.STORED:
            req = self._stored(ep, inc)
        elif ep.body is BodyKind.MULTIPART:
            req = self._multipart(ep, inc)
        else:
            req = parse_request(
                inc.path,
                inc.body,
                request_id=inc.request_id,
                received=inc.received,
                deadline_s=self.deadline_s,
                session_key=inc.session_key,
                accept=inc.accept,
                default_model=self.only_model,
                streamable=ep.stream is not StreamKind.NONE,
            )
        req.method = inc.method
        if req.stream:
            req.events = _EVENTS.get(ep.stream)
        elif self.assemble_kinds and not_assembled(req.path, req.doc) is None:
            req.assembly = StreamForm.of(req.doc)  # asked as a stream where the engine allows
        return req

    # -- bodies --------------------------------------------------------------------------

    def _multipart(self, ep: Endpoint, inc: Incoming) -> ProxyRequest:
        content_type = inc.content_type or ""
        try:
            boundary = boundary_of(content_type)
            fields = form_fields(inc.body, boundary, _FORM_FIELDS, max_parts=self.max_form_parts)
        except MultipartError as exc:
            message = f"bad multipart/form-data body: {exc}"
            raise ApiError(400, message, code="invalid_form") from None
        if not _CONTENT_TYPE_RE.match(content_type):
            raise ApiError(400, "Content-Type header too long or not ASCII", code="invalid_form")
        model = fields.get("model") or self.only_model()
        stream = ep.stream is not StreamKind.NONE and fields.get("stream", "").lower() in _TRUE
        req = self._plain(inc, model=model, stream=stream)
        req.content_type = content_type
        return req

    def _stored(self, ep: Endpoint, inc: Incoming) -> ProxyRequest:
        """Retrieve or cancel a stored response: any model, every node asked in turn.

        ``?stream=true&starting_after=N`` (retrieve) is forwarded: vLLM replays the stream.
        """
        if not all(_STORED_ID_RE.match(arg) for arg in inc.path_args):
            raise ApiError(400, "invalid response id", param="response_id")
        if not _QUERY_RE.match(inc.query):
            raise ApiError(400, "invalid query string", code="invalid_query")
        params = dict(p.partition("=")[::2] for p in inc.query.split("&") if p)
        stream = ep.stream is not StreamKind.NONE and params.get("stream", "").lower() in _TRUE
        req = self._plain(inc, model="", stream=stream)
        if inc.query:
            req.path = f"{inc.path}?{inc.query}"
        req.ask_each = True
        return req

    def _plain(self, inc: Incoming, *, model: str, stream: bool) -> ProxyRequest:
        accept = inc.accept if inc.accept and ACCEPT_RE.match(inc.accept) else None
        return ProxyRequest(
            request_id=inc.request_id,
            path=inc.path,
            body=inc.body,
            doc={},
            model=model,
            stream=stream,
            received=inc.received,
            deadline=inc.received + self.deadline_s,
            session_key=inc.session_key or None,
            accept=accept,
        )

    # -- the default model ------------------------------------------------------------------

    def only_model(self) -> str:
        """The model a body without one goes to: the fleet's only model.

        With no node registered yet, waits for one (``routing.no_capacity_wait_s``)
        like any request finding no capacity; with several models, the client must
        say which (400).
        """
        limit = self.clock() + self.no_capacity_wait_s
        while True:
            models = sorted({m for node in self.registry.nodes() for m in node.models})
            if len(models) == 1:
                return models[0]
            if models:
                raise ApiError(
                    400,
                    f"'model' is required: this router serves {len(models)} models "
                    f"({', '.join(models[:10])})",
                    param="model",
                )
            remaining = limit - self.clock()
            if remaining <= 0:
                raise ApiError(
                    503,
                    "no node is registered yet, so no model to default to; retry later",
                    code="no_capacity",
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            self.registry.wait_for_change(min(remaining, 0.5))
