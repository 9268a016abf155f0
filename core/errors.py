"""OpenAI-shaped error bodies, shared by the router and the simulator.

Clients built on the OpenAI SDK parse ``{"error": {...}}``; anything else
becomes an opaque failure for them, so every 4xx/5xx we emit uses this shape.
"""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str | None = None,
) -> dict[str, Any]:
    """The ``{"error": {...}}`` body for ``status``."""
    return {
        "error": {
            "message": message,
            "type": type
            or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }
