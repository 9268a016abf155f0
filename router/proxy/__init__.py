"""The proxy: one data-plane request forwarded to a node (see :mod:`.forward`).

Its parts: the request and answer types (:mod:`.request`), the attempt loop
(:mod:`.attempts`: failover, retries, capacity waits; :mod:`.choice`: which
node; :mod:`.attempt`: one attempt on one node) and the responses
(:mod:`.responses`: answers, errors and streams for the client, metrics and
the access log).
"""

from .forward import Proxy
from .request import (
    ACCEPT_RE,
    Answer,
    ApiError,
    ClientLeft,
    ProxyRequest,
    ProxyResponse,
    parse_request,
    request_id_from,
)

__all__ = [
    "ACCEPT_RE",
    "Answer",
    "ApiError",
    "ClientLeft",
    "Proxy",
    "ProxyRequest",
    "ProxyResponse",
    "parse_request",
    "request_id_from",
]
