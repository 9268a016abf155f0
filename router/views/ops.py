"""Ops endpoints: liveness, readiness and the Prometheus metrics (no auth).

Paths and answers are :mod:`spotrelay.core.control_api`'s.
"""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from spotrelay.core.control_api import HEALTHZ, METRICS, READYZ, ROUTER_HEADER, Health, Readiness

from ..service import RouterService
from .errors import json_response


class OpsViews:
    def __init__(self, service: RouterService) -> None:
        self.service = service

    def healthz(self) -> Response:
        return json_response(Health().to_json())

    def readyz(self) -> Response:
        registry = self.service.registry
        readiness = Readiness(registry.any_ready(), registry.counts_by_status())
        return json_response(readiness.to_json(), readiness.status)

    def metrics(self) -> Response:
        resp = Response(self.service.metrics.render(), 200, content_type=CONTENT_TYPE_LATEST)
        resp.headers[ROUTER_HEADER] = self.service.router_id  # counters are per worker
        return resp


def blueprint(service: RouterService) -> Blueprint:
    views = OpsViews(service)
    bp = Blueprint("ops", __name__)
    bp.add_url_rule(HEALTHZ, view_func=views.healthz, methods=["GET"])
    bp.add_url_rule(READYZ, view_func=views.readyz, methods=["GET"])
    bp.add_url_rule(METRICS, view_func=views.metrics, methods=["GET"])
    return bp
