"""The data plane: every endpoint of the table (:mod:`spotrelay.router.endpoints`), thin views.

Request hooks check the API key (``auth.api_keys``) before any view; the
views refuse a request loop, read the body within ``routing.max_body_bytes``
and hand a :class:`~spotrelay.router.dataplane.Incoming` to
:class:`~spotrelay.router.dataplane.DataPlane` and the result to the proxy.
Whatever the router refuses itself is an :class:`ApiError` raised to one
error handler, which counts it (model label ``none``) and answers it in
OpenAI's shape with the request's ``X-Request-ID``.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from flask import Blueprint, Request, Response, request

from ..dataplane import Incoming
from ..endpoints import ENDPOINTS, BodyKind, Endpoint, Routing, display_path
from ..proxy import ApiError, ProxyRequest, request_id_from
from ..service import RouterService
from ..stream.disconnect import ClientLink
from ..stream.resume_request import RESUME_HEADER, resume_off
from ..transport.loopmark import HOP_HEADER, LOOP_HEADER, parse_hops
from .body import TOO_LARGE, BadBody, read_body
from .current import RECEIVED, REQUEST_ID, current_request, header_key
from .errors import api_error, json_response, send, too_large

log = logging.getLogger("spotrelay.router")

_TRUE = ("1", "true", "yes")
_REQUEST_ID_KEY = header_key("X-Request-ID")
_HOP_KEY = header_key(HOP_HEADER)
_RESUME_KEY = header_key(RESUME_HEADER)


class DataPlaneViews:
    """The data plane's hooks and views over ``service``.

    The hook and the views bind the request once and read its headers from the
    WSGI environ (:mod:`.current` says why and what it saves).
    """

    def __init__(self, service: RouterService) -> None:
        self.service = service
        self.proxy = service.proxy
        self.dataplane = service.dataplane
        self.tracing = service.tracing
        self.api_auth = service.api_auth
        self.metrics = service.metrics
        routing = service.cfg.routing
        self.max_body = routing.max_body_bytes
        self.session_key = header_key(routing.session_header)
        self.long_key = header_key(routing.long_request_header)

    # -- hooks ---------------------------------------------------------------------------

    def check_api_key(self) -> None:
        """Before every view: note when the request came and its id; refuse a bad API key."""
        environ = request.environ
        environ[RECEIVED] = time.monotonic()
        environ[REQUEST_ID] = request_id_from(environ.get(_REQUEST_ID_KEY))
        if not self.api_auth.allows(_credential(environ)):
            raise ApiError(401, "missing or invalid API key", code="invalid_api_key")

    def refused(self, err: ApiError) -> Response:
        """The error handler: a request the router refused itself, counted and answered."""
        self.metrics.count_request("none", err.status)
        return api_error(err, request.environ.get(REQUEST_ID))

    # -- views ---------------------------------------------------------------------------

    def forward(self, ep: Endpoint, **path_args: str) -> Response:
        """An endpoint answered by a node."""
        current = current_request()
        environ = current.environ
        request_id: str = environ[REQUEST_ID]
        hops = parse_hops(environ.get(_HOP_KEY))
        self._refuse_loop(hops, request_id)
        body = b""
        if ep.body is not BodyKind.NONE or current.method == "POST":
            body = self._body(current, request_id)
        req = self.dataplane.request(ep, self._incoming(current, body, path_args))
        self._annotate(req, current, hops)
        return send(self.proxy.forward(req))

    def models(self, ep: Endpoint) -> Response:
        """``GET /v1/models``: the router's own answer, the models ready nodes serve."""
        request_id = request.environ[REQUEST_ID]
        return json_response(self.service.models_doc(), 200, {"X-Request-ID": request_id})

    def refuse(self, ep: Endpoint) -> Response:
        """An endpoint the router does not forward: 403 with the reason."""
        path = display_path(ep.path)
        return self.refused(ApiError(403, f"{path} {ep.reason}", code="unsupported_endpoint"))

    # -- small steps ---------------------------------------------------------------------

    def _refuse_loop(self, hops: tuple[str, ...], request_id: str) -> None:
        """508 for a request this router already forwarded (or one that went round too often).

        The sending router sees ``X-Spotrelay-Loop`` and counts a node failure.
        """
        if not self.proxy.loop_marks.loops_back(hops):
            return
        log.warning(
            "refused a proxied request that already passed through this router "
            "(%d hop marks): a node URL leads back to a router",
            len(hops),
            extra={"request_id": request_id},
        )
        raise ApiError(
            508,
            "request loop: a registered node URL points back at a spotrelay router",
            code="loop_detected",
            headers={LOOP_HEADER: "1"},
        )

    def _body(self, current: Request, request_id: str) -> bytes:
        try:
            return read_body(self.max_body, current)
        except TOO_LARGE:
            raise too_large(self.max_body) from None
        except BadBody as exc:
            exc.log(request_id)
            raise ApiError(exc.status, exc.message, code=exc.code) from None

    def _incoming(self, current: Request, body: bytes, path_args: dict[str, Any]) -> Incoming:
        environ = current.environ
        return Incoming(
            method=current.method,
            path=current.path,
            body=body,
            content_type=environ.get("CONTENT_TYPE"),
            request_id=environ[REQUEST_ID],
            received=environ[RECEIVED],
            session_key=environ.get(self.session_key),
            accept=environ.get("HTTP_ACCEPT"),
            query=current.query_string.decode("latin-1"),
            path_args=tuple(path_args.values()),
        )

    def _annotate(self, req: ProxyRequest, current: Request, hops: tuple[str, ...]) -> None:
        """What the request's headers and connection add to the proxy request."""
        environ = current.environ
        req.resume_off = resume_off(environ.get(_RESUME_KEY))
        req.long_hint = environ.get(self.long_key, "").strip().lower() in _TRUE
        req.hops = hops
        client_sock = environ.get("gunicorn.socket")
        if client_sock is not None:
            req.client = ClientLink(client_sock)
        req.trace = self.tracing.start(
            current.headers, request_id=req.request_id, path=req.path, model=req.model
        )


def blueprint(service: RouterService) -> Blueprint:
    """The data plane's blueprint: one rule per endpoint of the table."""
    views = DataPlaneViews(service)
    bp = Blueprint("api", __name__)
    bp.before_request(views.check_api_key)
    bp.register_error_handler(ApiError, views.refused)
    by_routing = {Routing.LOCAL: views.models, Routing.REFUSED: views.refuse}
    for ep in ENDPOINTS:
        view = by_routing.get(ep.routing, views.forward)
        bp.add_url_rule(ep.path, ep.path, partial(view, ep), methods=list(ep.methods))
    return bp


def _credential(environ: dict[str, Any]) -> str | None:
    """``Authorization``, or Anthropic SDKs' ``x-api-key`` as a bearer token."""
    auth: str | None = environ.get("HTTP_AUTHORIZATION")
    if auth is None and (key := environ.get("HTTP_X_API_KEY")):
        return f"Bearer {key}"
    return auth
