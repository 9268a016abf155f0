"""The router's Flask application: thin routes over :class:`RouterService`.

Data plane (OpenAI-compatible, optional API keys), control plane (node
token), ops endpoints. Every error is JSON: OpenAI's ``{"error": {...}}``
shape on the data plane and for unknown paths, ``{"error": "..."}`` on the
control plane.

Which listener serves what: the control listener (``server.control_port``)
serves ``/nodes``, ``/instances``, ``/metrics``, ``/healthz`` and ``/readyz``
only; the main port serves the data plane and the health endpoints, plus
the control plane and ``/metrics`` while ``server.control_on_main_port`` is on. A path served
elsewhere answers 404 like an unknown one. The control plane's and the ops endpoints' paths and
answers are defined in :mod:`spotrelay.core.control_api`, which their clients share.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, request
from gunicorn.http.errors import ParseException
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from spotrelay.core.control_api import (
    AUTH_SCHEME,
    CONTROL_PATHS,
    CONTROL_PREFIXES,
    HEALTHZ,
    INSTANCE_DRAIN_RULE,
    METRICS,
    NODE_DRAIN_RULE,
    NODE_RULE,
    NODES,
    OPS_PATHS,
    READYZ,
    REGISTRY_HEADER,
    ROUTER_HEADER,
    UNAUTHORIZED,
    Health,
    Readiness,
    error_doc,
)
from spotrelay.core.errors import openai_error
from spotrelay.core.logs import clip

from .dataplane import Incoming
from .endpoints import ENDPOINTS, BodyKind, Endpoint, Routing, display_path
from .proxy import ApiError, ProxyResponse, request_id_from
from .service import MAX_CONTROL_BODY, ControlResult, RouterService
from .stream.disconnect import ClientLink
from .stream.resume_request import RESUME_HEADER, resume_off
from .transport.httpguard import CONTROL, ClientTimeout, close_after_response, plane_of
from .transport.loopmark import HOP_HEADER, LOOP_HEADER, parse_hops

log = logging.getLogger("spotrelay.router")


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc), status, headers, content_type="application/json")


def _api_error(err: ApiError, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(err.body(), err.status, headers, content_type="application/json")


def _send(resp: ProxyResponse) -> Response:
    return Response(
        resp.body,
        resp.status,
        resp.headers,
        content_type=resp.content_type,
        direct_passthrough=True,
    )


def _control(result: ControlResult) -> Response:
    return _json(result.doc, result.status)


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    """The body could not be read: bad chunk framing, cut short, or too slow (``status``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def read_body(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes, whether or not it has a Content-Length.

    A declared length over the limit is refused before reading; a chunked body
    (gunicorn de-chunks it and marks the input terminated) is read up to one
    byte past the limit, so a huge upload costs at most ``limit`` of memory.
    A body that cannot be read is :class:`BadBody`, and the connection is
    closed after the answer (its framing is lost).
    """
    length = request.content_length  # None for Transfer-Encoding: chunked
    if length is not None and length > limit:
        raise BodyTooLarge
    environ = request.environ
    stream = environ["wsgi.input"]
    try:
        if length is not None:
            data = stream.read(length)
            if len(data) < length:
                raise BadBody(400, "incomplete_body", "body shorter than its Content-Length")
            return data
        if not environ.get("wsgi.input_terminated"):
            return b""
        data = stream.read(limit + 1)
    except ClientTimeout as exc:
        close_after_response(environ)
        raise BadBody(408, "request_timeout", str(exc)) from None
    except (ParseException, OSError, ValueError) as exc:  # NoMoreData is an OSError
        close_after_response(environ)
        message = f"request body is malformed: {clip(str(exc), 200)}"
        raise BadBody(400, "invalid_body", message) from None
    except BadBody:
        close_after_response(environ)
        raise
    if len(data) > limit:
        raise BodyTooLarge
    return data


def create_app(service: RouterService) -> Flask:
    """The WSGI app for ``service`` (background tasks are the caller's to start)."""
    app = Flask(__name__)
    max_body = service.cfg.routing.max_body_bytes
    app.extensions["spotrelay"] = service
    session_header = service.cfg.routing.session_header
    long_header = service.cfg.routing.long_request_header
    proxy = service.proxy
    api_auth = service.api_auth
    node_auth = service.node_auth

    # -- which listener serves what -------------------------------------------------------

    control_port = service.cfg.server.control_port
    control_on_main = service.cfg.server.control_on_main_port or not control_port

    @app.before_request
    def listener_scope() -> Response | None:
        path = request.path
        if path in OPS_PATHS:
            return None
        control_path = path in CONTROL_PATHS or path.startswith(CONTROL_PREFIXES)
        on_control = control_port and plane_of(request.environ, control_port) == CONTROL
        if (control_path and not on_control and not control_on_main) or (
            on_control and not control_path
        ):
            return _json(openai_error(404, f"no such endpoint: {clip(path)}"), 404)
        return None

    # -- data plane: every endpoint of the table, one view ---------------------------------

    rejected = service.metrics.requests
    dataplane = service.dataplane
    tracing = service.tracing
    endpoints = {ep.path: ep for ep in ENDPOINTS}

    def data_plane(**_path_args: str) -> Response:
        received = time.monotonic()
        ep = endpoints[request.url_rule.rule if request.url_rule else request.path]
        headers = request.headers
        request_id = request_id_from(headers.get("X-Request-ID"))
        if not api_auth.allows(_credential(headers)):
            rejected.labels("none", "401").inc()
            return _api_error(
                ApiError(401, "missing or invalid API key", code="invalid_api_key"), request_id
            )
        if ep.routing is Routing.REFUSED:
            rejected.labels("none", "403").inc()
            return _api_error(_refused(ep), request_id)
        if ep.routing is Routing.LOCAL:
            return _json(service.models_doc(), 200, {"X-Request-ID": request_id})
        hops = parse_hops(headers.get(HOP_HEADER))
        if service.proxy.loop_marks.loops_back(hops):
            return _loop_detected(service, hops, request_id)
        body = b""
        if ep.body is not BodyKind.NONE or request.method == "POST":
            try:
                body = read_body(max_body)
            except (BodyTooLarge, RequestEntityTooLarge):
                rejected.labels("none", "413").inc()
                return _too_large(service, request_id)
            except BadBody as exc:
                rejected.labels("none", str(exc.status)).inc()
                _log_bad_body(exc, request_id)
                return _api_error(ApiError(exc.status, exc.message, code=exc.code), request_id)
        incoming = Incoming(
            method=request.method,
            path=request.path,
            body=body,
            content_type=headers.get("Content-Type"),
            request_id=request_id,
            received=received,
            session_key=headers.get(session_header),
            accept=headers.get("Accept"),
            query=request.query_string.decode("latin-1"),
            path_args=tuple(_path_args.values()),
        )
        try:
            req = dataplane.request(ep, incoming)
        except ApiError as err:
            rejected.labels("none", str(err.status)).inc()
            return _api_error(err, request_id)
        req.resume_off = resume_off(headers.get(RESUME_HEADER))
        req.long_hint = headers.get(long_header, "").strip().lower() in ("1", "true", "yes")
        req.hops = hops
        client_sock = request.environ.get("gunicorn.socket")
        if client_sock is not None:
            req.client = ClientLink(client_sock)
        req.trace = tracing.start(headers, request_id=request_id, path=req.path, model=req.model)
        return _send(proxy.forward(req))

    for ep in ENDPOINTS:
        app.add_url_rule(ep.path, ep.path, data_plane, methods=list(ep.methods))

    # -- control plane -------------------------------------------------------------------

    def denied() -> Response | None:
        if node_auth.allows(request.headers.get("Authorization")):
            return None
        return _json(error_doc(UNAUTHORIZED), 401, {"WWW-Authenticate": AUTH_SCHEME})

    @app.get(NODES)
    def list_nodes() -> Response:
        if (refused := denied()) is not None:
            return refused
        resp = _control(service.list_nodes())
        # Which process answered, and whether its view is the shared one (spotrelay status).
        resp.headers[ROUTER_HEADER] = service.router_id
        resp.headers[REGISTRY_HEADER] = service.registry_state()
        return resp

    @app.put(NODE_RULE)
    def put_node(node_id: str) -> Response:
        if (refused := denied()) is not None:
            return refused
        try:
            raw = read_body(MAX_CONTROL_BODY)
        except (BodyTooLarge, RequestEntityTooLarge):
            return _json(error_doc(f"body larger than {MAX_CONTROL_BODY} bytes"), 413)
        except BadBody as exc:
            _log_bad_body(exc, None)
            return _json(error_doc(exc.message), exc.status)
        return _control(service.put_node(node_id, raw))

    @app.post(NODE_DRAIN_RULE)
    def drain_node(node_id: str) -> Response:
        return denied() or _control(service.drain_node(node_id))

    @app.post(INSTANCE_DRAIN_RULE)
    def drain_instance(instance_id: str) -> Response:
        return denied() or _control(service.drain_instance(instance_id))

    @app.delete(NODE_RULE)
    def delete_node(node_id: str) -> Response:
        return denied() or _control(service.delete_node(node_id))

    # -- ops -----------------------------------------------------------------------------

    @app.get(HEALTHZ)
    def healthz() -> Response:
        return _json(Health().to_json())

    @app.get(READYZ)
    def readyz() -> Response:
        readiness = Readiness(service.registry.any_ready(), service.registry.counts_by_status())
        return _json(readiness.to_json(), readiness.status)

    @app.get(METRICS)
    def metrics() -> Response:
        resp = Response(service.metrics.render(), 200, content_type=CONTENT_TYPE_LATEST)
        resp.headers[ROUTER_HEADER] = service.router_id  # counters are per worker
        return resp

    # -- errors --------------------------------------------------------------------------

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return _too_large(service, request_id_from(request.headers.get("X-Request-ID")))
        if status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif status == 404:
            message = f"no such endpoint: {clip(request.path)}"
        else:
            message = exc.description or exc.name
        doc = openai_error(status, message)
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return _json(doc, status, headers)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        request_id = request_id_from(request.headers.get("X-Request-ID"))
        log.exception("unhandled error", extra={"request_id": request_id})
        doc = openai_error(500, "internal router error", code="internal_error")
        return _json(doc, 500, {"X-Request-ID": request_id})

    return app


def _credential(headers: Any) -> str | None:
    """``Authorization``, or Anthropic SDKs' ``x-api-key`` as a bearer token."""
    auth = headers.get("Authorization")
    if auth is None and (key := headers.get("X-Api-Key")):
        return f"Bearer {key}"
    return auth


def _refused(ep: Endpoint) -> ApiError:
    path = display_path(ep.path)
    return ApiError(403, f"{path} {ep.reason}", code="unsupported_endpoint")


def _log_bad_body(exc: BadBody, request_id: str | None) -> None:
    log.warning(
        "refused a request from %s: %d %s",
        request.remote_addr or "-",
        exc.status,
        exc.message,
        extra={"request_id": request_id} if request_id else None,
    )


def _loop_detected(service: RouterService, hops: tuple[str, ...], request_id: str) -> Response:
    """508 for a request this router already forwarded (or one that went round too often).

    The sending router sees ``X-Spotrelay-Loop`` and counts a node failure.
    """
    service.metrics.requests.labels("none", "508").inc()
    log.warning(
        "refused a proxied request that already passed through this router "
        "(%d hop marks): a node URL leads back to a router",
        len(hops),
        extra={"request_id": request_id},
    )
    err = ApiError(
        508,
        "request loop: a registered node URL points back at a spotrelay router",
        code="loop_detected",
        headers={LOOP_HEADER: "1"},
    )
    return _api_error(err, request_id)


def _too_large(service: RouterService, request_id: str) -> Response:
    limit = service.cfg.routing.max_body_bytes
    err = ApiError(413, f"request body exceeds {limit} bytes", code="body_too_large")
    return _api_error(err, request_id)
