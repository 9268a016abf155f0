"""The router's Flask application: three blueprints over :class:`RouterService`.

The data plane (:mod:`.views.api`: OpenAI-compatible, optional API keys),
the control plane (:mod:`.views.control`: node token) and the ops endpoints
(:mod:`.views.ops`). One request hook first decides which listener serves
which path (:mod:`.views.listeners`); every error is JSON (:mod:`.views.errors`).
The control plane's and the ops endpoints' paths and answers are defined in
:mod:`spotrelay.core.control_api`, which their clients share.
"""

from __future__ import annotations

from flask import Flask

from .service import RouterService
from .views import api, control, errors, ops
from .views.listeners import listener_scope


def create_app(service: RouterService) -> Flask:
    """The WSGI app for ``service`` (background tasks are the caller's to start)."""
    app = Flask(__name__)
    app.extensions["spotrelay"] = service
    app.before_request(listener_scope(service.cfg.server))
    app.register_blueprint(api.blueprint(service))
    app.register_blueprint(control.blueprint(service))
    app.register_blueprint(ops.blueprint(service))
    errors.register(app, service.cfg.routing.max_body_bytes)
    return app
