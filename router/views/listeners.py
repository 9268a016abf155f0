"""Which listener serves what: a request hook that answers 404 for a path served elsewhere.

The control listener (``server.control_port``) serves ``/nodes``,
``/instances``, ``/metrics``, ``/healthz`` and ``/readyz`` only; the main
port serves the data plane and the health endpoints, plus the control plane
and ``/metrics`` while ``server.control_on_main_port`` is on. A path served
elsewhere answers 404 like an unknown one. Decided by path, not by route, so
a wrong method on a path served elsewhere is a 404 too, not a 405. The paths
are :mod:`spotrelay.core.control_api`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response

from spotrelay.core.control_api import CONTROL_PATHS, CONTROL_PREFIXES, OPS_PATHS
from spotrelay.core.errors import openai_error
from spotrelay.core.logs import clip

from ..settings import Server
from ..transport.httpguard import CONTROL, plane_of
from .current import current_request
from .errors import json_response


def listener_scope(server: Server) -> Callable[[], Response | None]:
    """The ``before_request`` hook for ``server``'s listeners."""
    control_port = server.control_port
    control_on_main = server.control_on_main_port or not control_port

    def hook() -> Response | None:
        current = current_request()
        path = current.path
        if path in OPS_PATHS:
            return None
        control_path = path in CONTROL_PATHS or path.startswith(CONTROL_PREFIXES)
        on_control = control_port and plane_of(current.environ, control_port) == CONTROL
        if (control_path and not on_control and not control_on_main) or (
            on_control and not control_path
        ):
            return json_response(openai_error(404, f"no such endpoint: {clip(path)}"), 404)
        return None

    return hook
