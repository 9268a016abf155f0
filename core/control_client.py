"""The one client of the routers' control plane, over whichever HTTP library a caller has.

The agent, the capacity controller, ``spotrelay status`` and the simulator's
fleet all call the routers through :class:`ControlClient`: paths, auth and
answers come from :mod:`.control_api`, the same definitions the router
serves. Only the way bytes travel differs: the agent keeps a urllib3 pool
with its own timeouts, while the controller runs in Lambda with the standard
library alone. So the transport is a plain callable, and
:class:`UrllibTransport` is the standard-library one.

A transport makes one attempt and never follows a redirect: the node token
must not be replayed to wherever a redirect points. Retrying is the
caller's business (a heartbeat is retried by the next one, a deregistration
by the agent's deadline loop, an interruption message by SQS). Error
messages name the method and URL, never the token.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .control_api import (
    HEALTHZ,
    METRICS,
    NODES,
    READYZ,
    REGISTRY_HEADER,
    ROUTER_HEADER,
    InstanceDrain,
    NodeAck,
    NodeDeleted,
    NodeDrain,
    NodeList,
    Readiness,
    ShapeError,
    auth_header,
    error_message,
    instance_drain_path,
    node_drain_path,
    node_path,
)
from .protocol import NodeReport

_T = TypeVar("_T")


@dataclass(frozen=True)
class Reply:
    """One HTTP answer as a transport hands it over; header names in lower case."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


# (method, url, body or None, headers) -> Reply; raises OSError when nothing answered.
Transport = Callable[[str, str, bytes | None, Mapping[str, str]], Reply]


def lower_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in items}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the Authorization header on: answer the 3xx instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class UrllibTransport:
    """The standard library's HTTP client: one attempt, ``timeout_s`` per socket operation."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __call__(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Reply:
        try:
            req = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
        except ValueError as exc:  # not an http(s) URL: nothing can answer it
            raise ConnectionError(str(exc)) from None
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                return Reply(resp.status, resp.read(), lower_headers(resp.headers.items()))
        except urllib.error.HTTPError as exc:  # an answer, just not a 2xx one
            with exc:
                try:
                    data = exc.read()
                except (OSError, http.client.HTTPException):
                    data = b""
            return Reply(exc.code, data, lower_headers(exc.headers.items()))
        except http.client.HTTPException as exc:  # a garbled answer is no answer
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


class ControlError(Exception):
    """A control-plane call that did not succeed; ``status`` is 0 when nothing answered."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NodeView:
    """``GET /nodes`` and who answered it: with registry ``redis`` the fleet's shared view."""

    nodes: NodeList
    answered_by: str | None  # "<hostname> pid <worker pid>"
    registry: str | None  # memory | redis | redis-down


class ControlClient:
    """The control-plane calls of one router (or one address in front of several).

    ``token`` may be replaced between calls (the controller re-reads a
    rotated one); None sends no ``Authorization`` header.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        transport: Transport | None = None,
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.transport: Transport = transport or UrllibTransport(timeout_s)

    def __repr__(self) -> str:
        return f"ControlClient({self.base})"

    # -- the calls -------------------------------------------------------------------------

    def put_node(self, node_id: str, report: NodeReport) -> NodeAck:
        """Register or heartbeat (``PUT /nodes/{id}``); :class:`ControlError` unless acked."""
        path = node_path(node_id)
        reply = self._call("PUT", path, report.to_json())
        return self._shape("PUT", path, reply, NodeAck.from_json)

    def drain_node(self, node_id: str) -> NodeDrain | None:
        """``POST /nodes/{id}/drain``; None when the router does not know the node (404)."""
        return self._maybe("POST", node_drain_path(node_id), NodeDrain.from_json)

    def delete_node(self, node_id: str) -> NodeDeleted | None:
        """``DELETE /nodes/{id}``; None when the router does not know the node (404)."""
        return self._maybe("DELETE", node_path(node_id), NodeDeleted.from_json)

    def drain_instance(self, instance_id: str) -> InstanceDrain | None:
        """``POST /instances/{id}/drain``; None when no node is on that instance (404)."""
        return self._maybe("POST", instance_drain_path(instance_id), InstanceDrain.from_json)

    def nodes(self) -> NodeView:
        """``GET /nodes``, with the answering router and its registry's state."""
        reply = self._call("GET", NODES)
        nodes = self._shape("GET", NODES, reply, NodeList.from_json)
        return NodeView(nodes, reply.header(ROUTER_HEADER), reply.header(REGISTRY_HEADER))

    def healthz(self) -> int:
        """``GET /healthz``'s status; 0 when nothing answered."""
        try:
            return self.transport("GET", self.base + HEALTHZ, None, {}).status
        except OSError:
            return 0

    def readyz(self) -> Readiness:
        """``GET /readyz``: a 503 is an answer too (no routable node), not an error."""
        return self._shape("GET", READYZ, self._send("GET", READYZ), Readiness.from_json)

    def metrics(self) -> str:
        """``GET /metrics``: the router's Prometheus text (the answering worker's counters)."""
        return self._call("GET", METRICS).body.decode("utf-8", "replace")

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, method: str, path: str, doc: Any = None) -> Reply:
        """One exchange; a refused token is an error whatever the call."""
        url = self.base + path
        headers = auth_header(self.token) if self.token else {}
        body = None
        if doc is not None:
            body = json.dumps(doc).encode()
            headers["Content-Type"] = "application/json"
        try:
            reply = self.transport(method, url, body, headers)
        except OSError as exc:
            raise ControlError(f"{method} {url}: {exc}") from None
        if reply.status == 401:
            raise ControlError(f"{method} {url}: 401, the router refused the node token", 401)
        return reply

    def _call(self, method: str, path: str, doc: Any = None) -> Reply:
        """A 2xx answer; any other status is a :class:`ControlError` with the router's reason."""
        reply = self._send(method, path, doc)
        if not 200 <= reply.status < 300:
            message = f"{method} {self.base}{path}: HTTP {reply.status}"
            detail = error_message(_decode(reply.body))
            raise ControlError(f"{message} {detail}" if detail else message, reply.status)
        return reply

    def _maybe(self, method: str, path: str, parse: Callable[[Any], _T]) -> _T | None:
        """A call on something the router may not know: its 404 is None, not an error."""
        try:
            reply = self._call(method, path)
        except ControlError as exc:
            if exc.status == 404:
                return None
            raise
        return self._shape(method, path, reply, parse)

    def _shape(self, method: str, path: str, reply: Reply, parse: Callable[[Any], _T]) -> _T:
        """The answer as its typed shape; a body of another shape is a :class:`ControlError`."""
        try:
            return parse(_decode(reply.body))
        except ShapeError as exc:
            raise ControlError(
                f"{method} {self.base}{path}: HTTP {reply.status} but not a control-plane "
                f"answer: {exc}",
                reply.status,
            ) from None


def _decode(body: bytes) -> Any:
    """The JSON of a body; None when it is empty or not JSON (a proxy's HTML page)."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None
