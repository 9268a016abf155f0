"""Ops endpoints: liveness, readiness and the Prometheus metrics (no auth)."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..service import RouterService
from .errors import json_response


class OpsViews:
    def __init__(self, service: RouterService) -> None:
        self.service = service

    def healthz(self) -> Response:
        return json_response({"status": "ok"})

    def readyz(self) -> Response:
        registry = self.service.registry
        ready = registry.any_ready()
        doc = {"ready": ready, "nodes": registry.counts_by_status()}
        return json_response(doc, 200 if ready else 503)

    def metrics(self) -> Response:
        resp = Response(self.service.metrics.render(), 200, content_type=CONTENT_TYPE_LATEST)
        resp.headers["X-Spotrelay-Router"] = self.service.router_id  # counters are per worker
        return resp


def blueprint(service: RouterService) -> Blueprint:
    views = OpsViews(service)
    bp = Blueprint("ops", __name__)
    bp.add_url_rule("/healthz", view_func=views.healthz, methods=["GET"])
    bp.add_url_rule("/readyz", view_func=views.readyz, methods=["GET"])
    bp.add_url_rule("/metrics", view_func=views.metrics, methods=["GET"])
    return bp
