"""The control plane: node registration, drains and removal, behind the node token.

A request hook checks the token before every view; whatever the blueprint
refuses is a :class:`ControlRefusal`, answered in the control plane's
``{"error": "..."}`` shape by one error handler. The operations themselves
are :class:`~spotrelay.router.service.RouterService`'s; the paths, the auth
scheme and the answers' shapes are :mod:`spotrelay.core.control_api`'s, which
every client of the control plane shares.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from spotrelay.core.control_api import (
    AUTH_SCHEME,
    INSTANCE_DRAIN_RULE,
    NODE_DRAIN_RULE,
    NODE_RULE,
    NODES,
    REGISTRY_HEADER,
    ROUTER_HEADER,
    UNAUTHORIZED,
    error_doc,
)

from ..service import MAX_CONTROL_BODY, ControlResult, RouterService
from .body import TOO_LARGE, BadBody, read_body
from .errors import json_response


class ControlRefusal(Exception):
    """A control-plane request refused before it reached the service."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ControlViews:
    """The control plane's hook and views over ``service``."""

    def __init__(self, service: RouterService) -> None:
        self.service = service
        self.node_auth = service.node_auth

    def check_node_token(self) -> None:
        if not self.node_auth.allows(request.headers.get("Authorization")):
            raise ControlRefusal(401, UNAUTHORIZED, {"WWW-Authenticate": AUTH_SCHEME})

    def list_nodes(self) -> Response:
        resp = _answer(self.service.list_nodes())
        # Which process answered, and whether its view is the shared one (spotrelay status).
        resp.headers[ROUTER_HEADER] = self.service.router_id
        resp.headers[REGISTRY_HEADER] = self.service.registry_state()
        return resp

    def put_node(self, node_id: str) -> Response:
        return _answer(self.service.put_node(node_id, _body()))

    def drain_node(self, node_id: str) -> Response:
        return _answer(self.service.drain_node(node_id))

    def drain_instance(self, instance_id: str) -> Response:
        return _answer(self.service.drain_instance(instance_id))

    def delete_node(self, node_id: str) -> Response:
        return _answer(self.service.delete_node(node_id))


def blueprint(service: RouterService) -> Blueprint:
    views = ControlViews(service)
    bp = Blueprint("control", __name__)
    bp.before_request(views.check_node_token)
    bp.register_error_handler(ControlRefusal, _refused)
    bp.add_url_rule(NODES, view_func=views.list_nodes, methods=["GET"])
    bp.add_url_rule(NODE_RULE, view_func=views.put_node, methods=["PUT"])
    bp.add_url_rule(NODE_DRAIN_RULE, view_func=views.drain_node, methods=["POST"])
    bp.add_url_rule(INSTANCE_DRAIN_RULE, view_func=views.drain_instance, methods=["POST"])
    bp.add_url_rule(NODE_RULE, view_func=views.delete_node, methods=["DELETE"])
    return bp


def _answer(result: ControlResult) -> Response:
    return json_response(result.doc, result.status)


def _refused(exc: ControlRefusal) -> Response:
    return json_response(error_doc(exc.message), exc.status, exc.headers)


def _body() -> bytes:
    """The registration body, within ``MAX_CONTROL_BODY``."""
    try:
        return read_body(MAX_CONTROL_BODY)
    except TOO_LARGE:
        raise ControlRefusal(413, f"body larger than {MAX_CONTROL_BODY} bytes") from None
    except BadBody as exc:
        exc.log(None)
        raise ControlRefusal(exc.status, exc.message) from None
