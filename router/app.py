"""The router's Flask application: three blueprints over :class:`RouterService`.

The data plane (:mod:`.views.api`: OpenAI-compatible, optional API keys),
the control plane (:mod:`.views.control`: node token) and the ops endpoints
(:mod:`.views.ops`). One request hook first decides which listener serves
which path (:mod:`.views.listeners`); every error is JSON (:mod:`.views.errors`).
The control plane's and the ops endpoints' paths and answers are defined in
:mod:`spotrelay.core.control_api`, which their clients share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from .service import RouterService
from .views import api, control, errors, ops
from .views.listeners import listener_scope


class RouterFlask(Flask):
    """Flask, with :meth:`ensure_sync`'s answer kept per function.

    Flask asks ``ensure_sync`` about every hook, view and error handler on
    every request, and each time ``inspect.iscoroutinefunction`` unwraps and
    inspects the function again (six Python calls; three functions run per
    data-plane request). The functions are the ones registered at start-up,
    so the answer is kept: 18 fewer Python calls per request, measured with
    cProfile (docs/benchmarks.md, "Router CPU before and after the structure
    work").
    """

    def __init__(self, import_name: str) -> None:
        super().__init__(import_name)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            sync = self._sync[func] = super().ensure_sync(func)
            return sync


def create_app(service: RouterService) -> Flask:
    """The WSGI app for ``service`` (background tasks are the caller's to start)."""
    app = RouterFlask(__name__)
    app.extensions["spotrelay"] = service
    app.before_request(listener_scope(service.cfg.server))
    app.register_blueprint(api.blueprint(service))
    app.register_blueprint(control.blueprint(service))
    app.register_blueprint(ops.blueprint(service))
    errors.register(app, service.cfg.routing.max_body_bytes)
    return app
