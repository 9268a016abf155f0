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

from flask import Blueprint, Response, g, request

from ..dataplane import Incoming
from ..endpoints import ENDPOINTS, BodyKind, Endpoint, Routing, display_path
from ..proxy import ApiError, ProxyRequest, request_id_from
from ..service import RouterService
from ..stream.disconnect import ClientLink
from ..stream.resume_request import RESUME_HEADER, resume_off
from ..transport.loopmark import HOP_HEADER, LOOP_HEADER, parse_hops
from .body import TOO_LARGE, BadBody, read_body
from .errors import api_error, json_response, send, too_large

log = logging.getLogger("spotrelay.router")

_TRUE = ("1", "true", "yes")


class DataPlaneViews:
    """The data plane's hooks and views over ``service``."""

    def __init__(self, service: RouterService) -> None:
        self.service = service
        self.proxy = service.proxy
        self.dataplane = service.dataplane
        self.tracing = service.tracing
        self.api_auth = service.api_auth
        self.rejected = service.metrics.requests
        routing = service.cfg.routing
        self.max_body = routing.max_body_bytes
        self.session_header = routing.session_header
        self.long_header = routing.long_request_header

    # -- hooks ---------------------------------------------------------------------------

    def check_api_key(self) -> None:
        """Before every view: note when the request came and its id; refuse a bad API key."""
        g.received = time.monotonic()
        g.request_id = request_id_from(request.headers.get("X-Request-ID"))
        if not self.api_auth.allows(_credential(request.headers)):
            raise ApiError(401, "missing or invalid API key", code="invalid_api_key")

    def refused(self, err: ApiError) -> Response:
        """The error handler: a request the router refused itself, counted and answered."""
        self.rejected.labels("none", str(err.status)).inc()
        return api_error(err, g.get("request_id"))

    # -- views ---------------------------------------------------------------------------

    def forward(self, ep: Endpoint, **path_args: str) -> Response:
        """An endpoint answered by a node."""
        hops = parse_hops(request.headers.get(HOP_HEADER))
        self._refuse_loop(hops)
        body = self._body() if ep.body is not BodyKind.NONE or request.method == "POST" else b""
        req = self.dataplane.request(ep, self._incoming(body, path_args))
        self._annotate(req, hops)
        return send(self.proxy.forward(req))

    def models(self, ep: Endpoint) -> Response:
        """``GET /v1/models``: the router's own answer, the models ready nodes serve."""
        return json_response(self.service.models_doc(), 200, {"X-Request-ID": g.request_id})

    def refuse(self, ep: Endpoint) -> Response:
        """An endpoint the router does not forward: 403 with the reason."""
        path = display_path(ep.path)
        return self.refused(ApiError(403, f"{path} {ep.reason}", code="unsupported_endpoint"))

    # -- small steps ---------------------------------------------------------------------

    def _refuse_loop(self, hops: tuple[str, ...]) -> None:
        """508 for a request this router already forwarded (or one that went round too often).

        The sending router sees ``X-Spotrelay-Loop`` and counts a node failure.
        """
        if not self.proxy.loop_marks.loops_back(hops):
            return
        log.warning(
            "refused a proxied request that already passed through this router "
            "(%d hop marks): a node URL leads back to a router",
            len(hops),
            extra={"request_id": g.request_id},
        )
        raise ApiError(
            508,
            "request loop: a registered node URL points back at a spotrelay router",
            code="loop_detected",
            headers={LOOP_HEADER: "1"},
        )

    def _body(self) -> bytes:
        try:
            return read_body(self.max_body)
        except TOO_LARGE:
            raise too_large(self.max_body) from None
        except BadBody as exc:
            exc.log(g.request_id)
            raise ApiError(exc.status, exc.message, code=exc.code) from None

    def _incoming(self, body: bytes, path_args: dict[str, Any]) -> Incoming:
        headers = request.headers
        return Incoming(
            method=request.method,
            path=request.path,
            body=body,
            content_type=headers.get("Content-Type"),
            request_id=g.request_id,
            received=g.received,
            session_key=headers.get(self.session_header),
            accept=headers.get("Accept"),
            query=request.query_string.decode("latin-1"),
            path_args=tuple(path_args.values()),
        )

    def _annotate(self, req: ProxyRequest, hops: tuple[str, ...]) -> None:
        """What the request's headers and connection add to the proxy request."""
        headers = request.headers
        req.resume_off = resume_off(headers.get(RESUME_HEADER))
        req.long_hint = headers.get(self.long_header, "").strip().lower() in _TRUE
        req.hops = hops
        client_sock = request.environ.get("gunicorn.socket")
        if client_sock is not None:
            req.client = ClientLink(client_sock)
        req.trace = self.tracing.start(
            headers, request_id=req.request_id, path=req.path, model=req.model
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


def _credential(headers: Any) -> str | None:
    """``Authorization``, or Anthropic SDKs' ``x-api-key`` as a bearer token."""
    auth = headers.get("Authorization")
    if auth is None and (key := headers.get("X-Api-Key")):
        return f"Bearer {key}"
    return auth
