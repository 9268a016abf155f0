"""The request being served, looked up once per hook or view rather than per attribute.

``flask.request`` and ``flask.g`` are context-local proxies: every attribute
read through one resolves the request context again (four Python calls), and
every ``request.headers.get`` goes through Werkzeug's ``EnvironHeaders`` key
mangling (four more). The data plane reads about fifteen such values per
request, so its hook and views bind the request once (:func:`current_request`)
and read headers straight from the WSGI environ, under the key Werkzeug itself
would use (:func:`header_key`). What the hook hands to the view (when the
request came, its id) rides in the environ too, under ``spotrelay.`` keys,
instead of ``flask.g``. Measured with cProfile on the router's worker, per
data-plane request: context-local lookups 21 → 5, ``EnvironHeaders`` lookups
11 → 2 (docs/benchmarks.md, "Router CPU before and after the structure work").
"""

from __future__ import annotations

from flask import Request, request

#: ``time.monotonic()`` when the data plane's hook saw the request.
RECEIVED = "spotrelay.received"
#: The request's id (the client's ``X-Request-ID`` when sane, else a fresh one).
REQUEST_ID = "spotrelay.request_id"

_UNPREFIXED = frozenset({"CONTENT_TYPE", "CONTENT_LENGTH"})


def current_request() -> Request:
    """The request object behind ``flask.request`` (one context lookup, then plain reads)."""
    return request._get_current_object()  # type: ignore[attr-defined]


def header_key(name: str) -> str:
    """The WSGI environ key of request header ``name``, as ``EnvironHeaders`` reads it."""
    key = name.upper().replace("-", "_")
    return key if key in _UNPREFIXED else f"HTTP_{key}"
