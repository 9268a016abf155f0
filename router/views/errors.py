"""Every error is JSON: response helpers and the app-wide error handlers.

OpenAI's ``{"error": {...}}`` shape on the data plane and for paths nothing
serves (404, 405, a body over the limit, an unhandled error: 500);
``{"error": "..."}`` on the control plane (see :mod:`.control`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from spotrelay.core.errors import openai_error
from spotrelay.core.logs import clip

from ..proxy import ApiError, ProxyResponse, request_id_from

log = logging.getLogger("spotrelay.router")


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc), status, headers, content_type="application/json")


def api_error(err: ApiError, request_id: str | None = None) -> Response:
    """``err`` in OpenAI's shape, with the request id (and the scheme a 401 wants)."""
    headers = dict(err.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    if err.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Response(err.body(), err.status, headers, content_type="application/json")


def send(resp: ProxyResponse) -> Response:
    """The proxy's response as Flask sends it: the body (bytes or a stream) untouched."""
    return Response(
        resp.body,
        resp.status,
        resp.headers,
        content_type=resp.content_type,
        direct_passthrough=True,
    )


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body exceeds {limit} bytes", code="body_too_large")


def register(app: Flask, max_body: int) -> None:
    """The app-wide handlers: HTTP errors (404, 405, 413, ...) and unhandled exceptions."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            request_id = request_id_from(request.headers.get("X-Request-ID"))
            return api_error(too_large(max_body), request_id)
        if status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif status == 404:
            message = f"no such endpoint: {clip(request.path)}"
        else:
            message = exc.description or exc.name
        headers = {}
        if status == 405 and exc.get_response().headers.get("Allow"):
            headers["Allow"] = exc.get_response().headers["Allow"]
        return json_response(openai_error(status, message), status, headers)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Response:
        request_id = request_id_from(request.headers.get("X-Request-ID"))
        log.exception("unhandled error", extra={"request_id": request_id})
        doc = openai_error(500, "internal router error", code="internal_error")
        return json_response(doc, 500, {"X-Request-ID": request_id})
