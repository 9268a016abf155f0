"""The aiohttp app of ``spotrelay sim vllm``: vLLM's OpenAI server as a router sees it.

Routes stay thin: bodies are validated by :mod:`.vllm_protocol`, timing and
capacity live in :mod:`.engine`, faults in :mod:`.faults`, counters in
:mod:`.vllm_stats`. This module serves vLLM's own endpoints and turns
generations into HTTP: JSON answers, SSE streams (:mod:`.vllm_stream`: one
content chunk per token) and dropped connections. The other route families
have their own modules: every request passes :mod:`.vllm_gate` first (records,
hangs and other faults), the Responses, Messages, tokenizer and scoring APIs
are :mod:`.vllm_apis`, and ``/_control/*`` is :mod:`.vllm_control`.

The server runs with aiohttp's ``handler_cancellation`` so a client that goes
away cancels its handler at once, which frees its engine slot.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import textgen
from .engine import Engine, Generation
from .faults import Faults
from .vllm_apis import ExtraApis, MessagesWriter, ResponsesWriter
from .vllm_control import ControlApi
from .vllm_gate import RequestGate
from .vllm_http import json_response
from .vllm_protocol import (
    GenerationRequest,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json,
)
from .vllm_settings import SimSettings
from .vllm_stats import RequestLog, RequestRecord, metrics_registry, render_metrics
from .vllm_stream import SSE_HEADERS, ChunkWriter, SseJob

log = logging.getLogger("spotrelay.sim.vllm")

VERSION = "0.0.0+spotrelay.sim"


class SimServer:
    """State of one simulator process and its aiohttp application."""

    def __init__(self, settings: SimSettings, faults: Faults | None = None) -> None:
        self.settings = settings
        self.limits = settings.limits()
        self.engine = Engine(settings.engine())
        self.faults = faults or Faults()
        self.engine.set_stalled(self.faults.stall, time.monotonic())
        self.log = RequestLog()
        self.registry = metrics_registry(self.engine)
        self.started = int(time.time())

    # -- application ----------------------------------------------------------

    def app(self) -> web.Application:
        gate = RequestGate(self.log, self.faults)
        app = web.Application(middlewares=[gate.track], client_max_size=64 * 1024 * 1024)
        r = app.router
        if self.settings.api == "vllm":
            r.add_get("/health", self.health)
            r.add_get("/ping", self.health)
            r.add_post("/ping", self.health)
            r.add_get("/version", self.version)
            r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.models)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/embeddings", self.embeddings)
        ExtraApis(self).add_routes(r)
        ControlApi(self.faults, self.engine, self.log).add_routes(r)
        return app

    # -- plain endpoints -------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.faults.unhealthy():
            return web.Response(status=503)
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": VERSION})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=render_metrics(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def models(self, request: web.Request) -> web.Response:
        model = self.settings.model
        return json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": model,
                        "object": "model",
                        "created": self.started,
                        "owned_by": "vllm" if self.settings.api == "vllm" else "spotrelay-sim",
                        "root": model,
                        "parent": None,
                        "max_model_len": self.settings.max_model_len,
                    }
                ],
            }
        )

    # -- generation ------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_json(await request.read())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_completion(await self._body(request), self.limits)
        return await self._generate(request, req, "cmpl-")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_chat(await self._body(request), self.limits)
        return await self._generate(request, req, "chatcmpl-")

    async def _generate(
        self, request: web.Request, req: GenerationRequest, prefix: str
    ) -> web.StreamResponse:
        request_id = prefix + uuid.uuid4().hex
        created = int(time.time())
        writer = ChunkWriter(req, request_id, created) if req.stream else None
        return await self.generate(
            request,
            req,
            writer,
            body=lambda gen, text: self._full_body(req, gen, text, request_id, created),
        )

    async def generate(
        self,
        request: web.Request,
        req: GenerationRequest,
        writer: ChunkWriter | ResponsesWriter | MessagesWriter | None,
        *,
        body: Callable[[Generation, str], dict[str, Any]] | None = None,
    ) -> web.StreamResponse:
        """Serve ``req``: streamed by ``writer``, or answered with ``body(gen, text)``."""
        rec: RequestRecord = request["record"]
        rec.model, rec.stream, rec.prompt_tokens = req.model, req.stream, req.prompt_tokens
        gen = self.engine.generation(req)
        drop: int | None = request.get("drop_after")
        headers = {}
        if "X-Request-ID" in request.headers:
            headers["X-Request-ID"] = request.headers["X-Request-ID"]
        try:
            if writer is not None:
                return await self._stream(request, gen, writer, drop, headers)
            if drop is not None:
                await gen.complete(give_up_after_tokens=drop)
                return await self._drop(request, rec)
            text = await gen.complete()
            assert body is not None, "a non-streaming request needs its body builder"
            return json_response(body(gen, text or ""), headers=headers)
        finally:
            rec.completion_tokens = gen.completion_tokens
            if gen.finish_reason == "stop" and rec.outcome is None:
                rec.outcome = "stopped"

    def _full_body(
        self, req: GenerationRequest, gen: Generation, text: str, request_id: str, created: int
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if req.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
            obj = "chat.completion"
        else:
            choice["text"] = req.echo + text
            obj = "text_completion"
        choice.update(logprobs=None, finish_reason=gen.finish_reason, stop_reason=gen.stop_reason)
        p, c = req.prompt_tokens, gen.completion_tokens
        return {
            "id": request_id,
            "object": obj,
            "created": created,
            "model": req.model,
            "choices": [choice],
            "usage": {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c},
        }

    async def _stream(
        self,
        request: web.Request,
        gen: Generation,
        chunks: ChunkWriter | ResponsesWriter | MessagesWriter,
        drop: int | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        rec: RequestRecord = request["record"]
        resp = web.StreamResponse(headers={**SSE_HEADERS, **headers})
        await resp.prepare(request)  # headers go out at once, as with vLLM
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if preamble := chunks.preamble():
            await resp.write(preamble)
        chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
        job: SseJob | None = None
        try:
            if drop == 0 and not chunks.chat:
                return await self._drop(request, rec)
            t0 = await gen.admit()
            gen.start()
            settings = self.engine.settings
            job = SseJob(gen, transport, chunks, chunked, drop, settings.itl_ms / 1000.0)
            self.engine.ticker.add(t0 + gen.ttft_s, job)
            outcome = await job.done
            if outcome == "drop":
                return await self._drop(request, rec)
            if outcome == "closed":  # the client left; aiohttp notices on write_eof
                rec.outcome = "aborted"
                return resp
            n = gen.completion_tokens
            job.send(chunks.closing(gen.finish_reason or "length", gen.stop_reason, n))
            await resp.write_eof()
            return resp
        finally:
            if job is not None:
                job.cancelled = True
            gen.finish()

    async def _drop(self, request: web.Request, rec: RequestRecord) -> web.StreamResponse:
        """Close the connection without finishing the response (the drop fault).

        ``close()`` lets bytes already written leave first; aiohttp then sees
        the connection lost and cancels this handler.
        """
        rec.outcome = "dropped"
        transport = request.transport
        if transport is not None:
            transport.close()
        await asyncio.sleep(30)  # cancelled as soon as the close completes
        return web.Response(status=500)  # never sent: the connection is gone

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        rec: RequestRecord = request["record"]
        req = parse_embedding(await self._body(request), self.limits)
        rec.model, rec.stream, rec.prompt_tokens = req.model, False, req.prompt_tokens
        if request.get("drop_after") is not None:
            return await self._drop(request, rec)
        gen = self.engine.generation(
            GenerationRequest("embedding", req.model, "", req.prompt_tokens, 0)
        )
        await gen.hold_slot(self.settings.ttft_ms / 1000.0)
        data = []
        for i, text in enumerate(req.inputs):
            vec = textgen.embed(text, req.dimensions)
            value: Any = vec
            if req.encoding_format == "base64":
                value = base64.b64encode(textgen.pack_float32(vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return json_response(
            {
                "id": "embd-" + uuid.uuid4().hex,
                "object": "list",
                "created": int(time.time()),
                "model": req.model,
                "data": data,
                "usage": {
                    "prompt_tokens": req.prompt_tokens,
                    "total_tokens": req.prompt_tokens,
                    "completion_tokens": 0,
                },
            }
        )


async def serve(settings: SimSettings, faults: Faults, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT; in-flight requests are cut after ``shutdown_timeout_s``."""
    server = SimServer(settings, faults)
    runner = web.AppRunner(
        server.app(),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    await runner.setup()
    # Move everything loaded so far out of the collector's way: with 1,000
    # streams a full collection would otherwise pause the loop for ~25 ms.
    gc.collect()
    gc.freeze()
    # A large backlog: benchmarks open 1,000 connections at once.
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "sim vllm serving model %s on http://%s:%d (ttft %.1f ms, itl %.1f ms, max_num_seqs %d)",
        settings.model,
        settings.host,
        settings.port,
        settings.ttft_ms,
        settings.itl_ms,
        settings.max_num_seqs,
    )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("sim vllm shutting down")
        await runner.cleanup()
