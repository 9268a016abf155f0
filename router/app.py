"""The router's Flask application: thin routes over :class:`RouterService`.

Data plane (OpenAI-compatible, optional API keys), control plane (node
token), ops endpoints. Every error is JSON: OpenAI's ``{"error": {...}}``
shape on the data plane and for unknown paths, ``{"error": "..."}`` on the
control plane.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from spotrelay.core.errors import openai_error

from .proxy import ApiError, ProxyResponse, parse_request, request_id_from
from .service import MAX_CONTROL_BODY, ControlResult, RouterService

log = logging.getLogger("spotrelay.router")

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")


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


def read_body(limit: int) -> bytes:
    """The request body, at most ``limit`` bytes, whether or not it has a Content-Length.

    A declared length over the limit is refused before reading; a chunked body
    (gunicorn de-chunks it and marks the input terminated) is read up to one
    byte past the limit, so a huge upload costs at most ``limit`` of memory.
    """
    length = request.content_length  # None for Transfer-Encoding: chunked
    if length is not None and length > limit:
        raise BodyTooLarge
    environ = request.environ
    stream = environ["wsgi.input"]
    if length is not None:
        return stream.read(length)
    if not environ.get("wsgi.input_terminated"):
        return b""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge
    return data


def create_app(service: RouterService) -> Flask:
    """The WSGI app for ``service`` (background tasks are the caller's to start)."""
    app = Flask(__name__)
    max_body = service.cfg.routing.max_body_bytes
    app.extensions["spotrelay"] = service
    deadline_s = service.cfg.timeouts.request_deadline_s
    session_header = service.cfg.routing.session_header
    proxy = service.proxy
    api_auth = service.api_auth
    node_auth = service.node_auth

    # -- data plane ----------------------------------------------------------------------

    rejected = service.metrics.requests

    def inference() -> Response:
        received = time.monotonic()
        headers = request.headers
        request_id = request_id_from(headers.get("X-Request-ID"))
        if not api_auth.allows(headers.get("Authorization")):
            rejected.labels("none", "401").inc()
            return _api_error(
                ApiError(401, "missing or invalid API key", code="invalid_api_key"), request_id
            )
        try:
            body = read_body(max_body)
        except (BodyTooLarge, RequestEntityTooLarge):
            rejected.labels("none", "413").inc()
            return _too_large(service, request_id)
        try:
            req = parse_request(
                request.path,
                body,
                request_id=request_id,
                received=received,
                deadline_s=deadline_s,
                session_key=headers.get(session_header),
                accept=headers.get("Accept"),
            )
        except ApiError as err:
            rejected.labels("none", str(err.status)).inc()
            return _api_error(err, request_id)
        return _send(proxy.forward(req))

    for path in INFERENCE_PATHS:
        app.add_url_rule(path, path, inference, methods=["POST"])

    @app.get("/v1/models")
    def models() -> Response:
        if not api_auth.allows(request.headers.get("Authorization")):
            return _api_error(ApiError(401, "missing or invalid API key", code="invalid_api_key"))
        return _json(service.models_doc())

    # -- control plane -------------------------------------------------------------------

    def denied() -> Response | None:
        if node_auth.allows(request.headers.get("Authorization")):
            return None
        return _json(
            {"error": "missing or invalid node token"}, 401, {"WWW-Authenticate": "Bearer"}
        )

    @app.get("/nodes")
    def list_nodes() -> Response:
        return denied() or _control(service.list_nodes())

    @app.put("/nodes/<node_id>")
    def put_node(node_id: str) -> Response:
        if (refused := denied()) is not None:
            return refused
        try:
            raw = read_body(MAX_CONTROL_BODY)
        except (BodyTooLarge, RequestEntityTooLarge):
            return _json({"error": f"body larger than {MAX_CONTROL_BODY} bytes"}, 413)
        return _control(service.put_node(node_id, raw))

    @app.post("/nodes/<node_id>/drain")
    def drain_node(node_id: str) -> Response:
        return denied() or _control(service.drain_node(node_id))

    @app.post("/instances/<instance_id>/drain")
    def drain_instance(instance_id: str) -> Response:
        return denied() or _control(service.drain_instance(instance_id))

    @app.delete("/nodes/<node_id>")
    def delete_node(node_id: str) -> Response:
        return denied() or _control(service.delete_node(node_id))

    # -- ops -----------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        ready = service.registry.any_ready()
        counts = service.registry.counts_by_status()
        return _json({"ready": ready, "nodes": counts}, 200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(service.metrics.render(), 200, content_type=CONTENT_TYPE_LATEST)

    # -- errors --------------------------------------------------------------------------

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            return _too_large(service, request_id_from(request.headers.get("X-Request-ID")))
        if status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif status == 404:
            message = f"no such endpoint: {request.path}"
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


def _too_large(service: RouterService, request_id: str) -> Response:
    limit = service.cfg.routing.max_body_bytes
    err = ApiError(413, f"request body exceeds {limit} bytes", code="body_too_large")
    return _api_error(err, request_id)
