"""What every request to the simulator passes first: counting, a record, the faults.

An aiohttp middleware: ``/_control/*`` goes straight through; other paths
are counted; a ``/v1/*`` request gets a :class:`.vllm_stats.RequestRecord`
and meets the faults in force (hang, unhealthy, error status, a drop after
N tokens, which the generation routes read from ``request["drop_after"]``)
before its handler runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .faults import Faults
from .vllm_http import error_response
from .vllm_protocol import BadRequest
from .vllm_stats import RequestLog, RequestRecord

GENERATING_PATHS = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"}
)


class RequestGate:
    """Records and faults for the requests of one simulator process."""

    def __init__(self, log: RequestLog, faults: Faults) -> None:
        self.log = log
        self.faults = faults

    @web.middleware
    async def track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts requests; for /v1/* keeps a record and applies the faults first."""
        path = request.path
        if path.startswith("/_control/"):
            return await handler(request)
        self.log.seen(path)
        if not path.startswith("/v1/"):
            try:
                return await handler(request)
            except BadRequest as exc:  # /tokenize, /score, ...: no record, no faults
                return error_response(exc.status, exc.message, exc.param)
        rec = RequestRecord(request.headers.get("X-Request-ID"), request.method, path)
        request["record"] = rec
        self.log.start(rec)
        try:
            resp = await self._faulted(request, handler, rec)
            rec.status = resp.status
            if rec.outcome is None:
                rec.outcome = "completed" if resp.status < 400 else "error"
            return resp
        except asyncio.CancelledError:
            if rec.outcome is None:
                rec.outcome = "aborted"
            raise
        finally:
            self.log.finish(rec)

    async def _faulted(
        self, request: web.Request, handler: Any, rec: RequestRecord
    ) -> web.StreamResponse:
        generates = request.method == "POST" and request.path in GENERATING_PATHS
        while True:
            decision = self.faults.decide(generates)
            if not decision.hang:
                break
            rec.outcome = "hung"
            await self.faults.wait_changed()  # until reset (or the client leaves)
        rec.outcome = None
        if decision.unhealthy:
            rec.outcome = "unhealthy"
            return error_response(503, "The model is not ready yet (simulated slow start).")
        if decision.error_status is not None:
            rec.outcome = "fault_error"
            return error_response(
                decision.error_status,
                f"Simulated fault: status {decision.error_status}.",
            )
        request["drop_after"] = decision.drop_after_tokens
        try:
            return await handler(request)
        except BadRequest as exc:
            rec.outcome = "rejected"
            return error_response(exc.status, exc.message, exc.param)
