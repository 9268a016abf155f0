"""The simulator's control API (``/_control/*``): faults at run time, stats, reset.

Not part of vLLM: tests and the demo use it to break a running engine
(``POST /_control/faults``, including the exit fault that kills the process
the way a reclaim does) and to read what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time

from aiohttp import web

from .engine import Engine
from .faults import FaultError, Faults
from .vllm_http import error_response, json_response
from .vllm_stats import RequestLog

log = logging.getLogger("spotrelay.sim.vllm")

EXIT_CODE = 137  # what a SIGKILLed process reports: the exit fault mimics a reclaim


class ControlApi:
    """Handlers of ``/_control/*``, sharing the server's faults, engine and request log."""

    def __init__(self, faults: Faults, engine: Engine, requests: RequestLog) -> None:
        self.faults = faults
        self.engine = engine
        self.requests = requests

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_control/faults", self.get_faults)
        router.add_post("/_control/faults", self.set_faults)
        router.add_post("/_control/reset", self.reset)
        router.add_get("/_control/stats", self.stats)
        router.add_delete("/_control/stats", self.clear_stats)

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.faults.state())

    async def set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            spec = json.loads(await request.read() or b"{}")
            exit_now = self.faults.update(spec)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error_response(400, f"Invalid JSON body: {exc}")
        except FaultError as exc:
            return error_response(400, str(exc))
        self.engine.set_stalled(self.faults.stall, asyncio.get_running_loop().time())
        log.info("faults set: %s", self.faults.state())
        resp = json_response(self.faults.state())
        if exit_now:
            await self._answer_then_exit(request, resp)
        return resp

    async def _answer_then_exit(self, request: web.Request, resp: web.Response) -> None:
        """Send ``resp``, then die at once: no cleanup, connections cut (like a reclaim)."""
        log.warning("exit fault: terminating abruptly with code %d", EXIT_CODE)
        await resp.prepare(request)
        await resp.write_eof()
        transport = request.transport
        deadline = time.monotonic() + 1.0
        while transport and transport.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_CODE)

    async def reset(self, request: web.Request) -> web.Response:
        self.faults.reset()
        self.engine.set_stalled(False, asyncio.get_running_loop().time())
        log.info("faults reset")
        return json_response(self.faults.state())

    async def stats(self, request: web.Request) -> web.Response:
        doc = self.requests.to_json()
        eng = self.engine
        doc["engine"] = {
            "running": eng.scheduler.running,
            "waiting": eng.scheduler.waiting,
            "kv_cache_usage": eng.kv_cache_usage,
            "prompt_tokens_total": eng.prompt_tokens_total,
            "generation_tokens_total": eng.generation_tokens_total,
            "finished": dict(eng.finished),
            "token_lateness": eng.ticker.lateness(),
        }
        doc["faults"] = self.faults.state()
        return json_response(doc)

    async def clear_stats(self, request: web.Request) -> web.Response:
        self.requests.reset()
        self.engine.ticker.reset_lateness()
        return json_response({"cleared": True})
