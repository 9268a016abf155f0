"""aiohttp front of the IMDS emulator: IMDS paths plus a JSON control API.

Routes are thin: IMDS requests go to :meth:`ImdsState.handle`, control
requests to :meth:`ImdsState.control`. Everything under ``/_control/`` needs
no token (it stands in for the EC2 control plane, not for the instance).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from .imds_control import ControlError
from .imds_state import ImdsState, Reply, Stall

log = logging.getLogger("spotrelay.sim.imds")

STATE_KEY = web.AppKey("imds_state", ImdsState)
SERVER_HEADER = "EC2ws"


def _response(reply: Reply) -> web.Response:
    headers = {"Server": SERVER_HEADER, "Content-Type": reply.content_type, **reply.headers}
    return web.Response(status=reply.status, body=reply.body.encode(), headers=headers)


def _json(status: int, doc: Any) -> web.Response:
    return web.json_response(doc, status=status, dumps=lambda d: json.dumps(d, indent=1))


async def imds(request: web.Request) -> web.StreamResponse:
    """Any IMDS path: token PUT, metadata GET/HEAD; outages apply to all of them."""
    state = request.app[STATE_KEY]
    result = state.handle(request.method, request.path, request.headers)
    while isinstance(result, Stall):
        # Hang like an unreachable IMDS; answer normally once the outage is over.
        await asyncio.sleep(max(result.seconds, 0.01))
        result = state.handle(request.method, request.path, request.headers, stalled=True)
    if result.status >= 400:
        log.debug("%s %s -> %d", request.method, request.path, result.status)
    return _response(result)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def get_state(request: web.Request) -> web.Response:
    return _json(200, request.app[STATE_KEY].snapshot())


async def control(request: web.Request) -> web.Response:
    """``POST /_control/<action>`` with an optional JSON object body."""
    state = request.app[STATE_KEY]
    name = request.match_info["action"]
    if name in ("state", "health"):
        return _json(405, {"error": f"use GET /_control/{name}"})
    if request.method != "POST":
        return _json(405, {"error": f"use POST /_control/{name} with a JSON object body"})
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        return _json(400, {"error": f"body must be JSON: {exc}"})
    try:
        snapshot = state.control(name, body)
    except ControlError as exc:
        return _json(exc.status, {"error": str(exc)})
    log.info("control %s %s", name, json.dumps(body) if body else "{}")
    return _json(200, snapshot)


def build_app(state: ImdsState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/_control/health", health, allow_head=True)
    app.router.add_get("/_control/state", get_state, allow_head=True)
    app.router.add_route("*", "/_control/{action}", control)
    app.router.add_route("*", "/{tail:.*}", imds)
    return app


def serve(state: ImdsState, host: str, port: int) -> None:
    """Run until SIGINT/SIGTERM; in-flight stalled requests are dropped at shutdown."""
    i = state.instance
    log.info(
        "IMDS emulator on http://%s:%d: %s %s %s in %s (IMDSv2 tokens required)",
        host,
        port,
        i.instance_id,
        i.lifecycle,
        i.instance_type,
        i.availability_zone,
    )
    web.run_app(
        build_app(state),
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=0.5,
        handle_signals=True,
    )
