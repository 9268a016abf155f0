"""The aiohttp app of ``spotrelay sim vllm``: vLLM's OpenAI server as a router sees it.

Routes stay thin: bodies are validated by :mod:`.vllm_protocol`, timing and
capacity live in :mod:`.engine`, faults in :mod:`.faults`, counters in
:mod:`.vllm_stats`. This module turns them into HTTP: JSON answers, SSE
streams (one content chunk per token, pre-encoded so a token costs a few
byte concatenations), dropped connections and hung requests.

The server runs with aiohttp's ``handler_cancellation`` so a client that goes
away cancels its handler at once, which frees its engine slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from spotrelay.core.errors import openai_error

from . import textgen
from .engine import STALL_POLL_S, Engine, EngineSettings, Generation
from .faults import FaultError, Faults
from .prefix_cache import (
    DEFAULT_BLOCK_TOKENS,
    DEFAULT_CAPACITY_BLOCKS,
    DEFAULT_PREFILL_TOKENS_PER_S,
    CacheSettings,
)
from .vllm_apis import ExtraApis, MessagesWriter, ResponsesWriter
from .vllm_protocol import (
    BadRequest,
    GenerationRequest,
    Limits,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json,
)
from .vllm_stats import RequestLog, RequestRecord, metrics_registry, render_metrics

log = logging.getLogger("spotrelay.sim.vllm")

VERSION = "0.0.0+spotrelay.sim"
EXIT_CODE = 137  # what a SIGKILLed process reports: the exit fault mimics a reclaim
GENERATING_PATHS = frozenset(
    {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"}
)
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


@dataclass
class SimSettings:
    """Everything ``spotrelay sim vllm`` is started with (besides faults)."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = "sim-model"
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    max_num_seqs: int = 256
    max_model_len: int = 4096
    default_max_tokens: int = 128
    kv_cache_tokens: int = 65536
    embedding_dim: int = 256
    block_size: int = DEFAULT_BLOCK_TOKENS
    prefix_cache_blocks: int = DEFAULT_CAPACITY_BLOCKS
    prefill_tokens_per_s: float = DEFAULT_PREFILL_TOKENS_PER_S
    shutdown_timeout_s: float = 0.0
    decode_pause_ms: float = 0.0
    decode_pause_every_s: float = 0.0
    api: str = "vllm"  # "openai": no /health, /version, /metrics (a non-vLLM engine)

    def engine(self) -> EngineSettings:
        return EngineSettings(
            model=self.model,
            ttft_ms=self.ttft_ms,
            itl_ms=self.itl_ms,
            max_num_seqs=self.max_num_seqs,
            max_model_len=self.max_model_len,
            kv_cache_tokens=self.kv_cache_tokens,
            prefix_cache=CacheSettings(
                block_tokens=self.block_size,
                capacity_blocks=self.prefix_cache_blocks,
                prefill_tokens_per_s=self.prefill_tokens_per_s,
            ),
            decode_pause_ms=self.decode_pause_ms,
            decode_pause_every_s=self.decode_pause_every_s,
        )

    def limits(self) -> Limits:
        return Limits(
            model=self.model,
            max_model_len=self.max_model_len,
            default_max_tokens=self.default_max_tokens,
            embedding_dim=self.embedding_dim,
        )


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def json_response(
    doc: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(doc, status=status, headers=headers, dumps=_dumps)


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    return json_response(openai_error(status, message, param=param), status=status)


_JSON_CACHE: dict[str, bytes] = {}


def _jstr(text: str) -> bytes:
    """JSON-encoded ``text``; vocabulary tokens are cached (a small, fixed set)."""
    out = _JSON_CACHE.get(text)
    if out is None:
        out = json.dumps(text).encode()
        if len(_JSON_CACHE) < 4096:
            _JSON_CACHE[text] = out
    return out


class ChunkWriter:
    """SSE chunk bytes for one streamed request, in vLLM's shapes."""

    def __init__(self, req: GenerationRequest, request_id: str, created: int) -> None:
        self.req = req
        self.chat = req.kind == "chat"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.head = {
            "id": request_id,
            "object": self.object,
            "created": created,
            "model": req.model,
        }
        head = _dumps(self.head)[:-1].encode()  # '{"id":...,"model":"m"' (left open)
        if self.chat:
            self._pre = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
            self._post = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._pre = b"data: " + head + b',"choices":[{"index":0,"text":'
            self._post = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    def _event(self, doc: dict[str, Any]) -> bytes:
        return b"data: " + _dumps(doc).encode() + b"\n\n"

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        p = self.req.prompt_tokens
        return {
            "prompt_tokens": p,
            "total_tokens": p + completion_tokens,
            "completion_tokens": completion_tokens,
        }

    def content(self, text: str, completion_tokens: int) -> bytes:
        if not self.req.continuous_usage:
            return self._pre + _jstr(text) + self._post
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": None}
        if self.chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
            choice["stop_reason"] = None
        return self._event(
            {**self.head, "choices": [choice], "usage": self._usage(completion_tokens)}
        )

    def role(self, completion_tokens: int) -> bytes:
        doc: dict[str, Any] = {
            **self.head,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        if self.req.continuous_usage:
            doc["usage"] = self._usage(completion_tokens)
        return self._event(doc)

    def final(self, finish_reason: str, stop_reason: str | None, completion_tokens: int) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = {}
        else:
            choice["text"] = ""
        choice.update(logprobs=None, finish_reason=finish_reason, stop_reason=stop_reason)
        doc: dict[str, Any] = {**self.head, "choices": [choice]}
        if self.req.continuous_usage:
            doc["usage"] = self._usage(completion_tokens)
        return self._event(doc)

    def usage(self, completion_tokens: int) -> bytes:
        return self._event({**self.head, "choices": [], "usage": self._usage(completion_tokens)})

    def preamble(self) -> bytes:
        """Events sent before prefill: none for completions and chat."""
        return b""

    def closing(self, finish_reason: str, stop_reason: str | None, completion_tokens: int) -> bytes:
        """The finish chunk, the usage chunk if asked for, and ``[DONE]``."""
        out = self.final(finish_reason, stop_reason, completion_tokens)
        if self.req.include_usage:
            out += self.usage(completion_tokens)
        return out + DONE


class SseJob:
    """One SSE stream's per-token step, run by the engine's :class:`Ticker`.

    Writes go straight to the transport as HTTP chunks (the response headers
    are already out, and ``write_eof`` adds the terminating chunk), so a token
    costs one ``send`` and no task switch. ``done`` resolves to ``"done"``,
    ``"drop"`` (the drop fault's token count was reached) or ``"closed"``.
    """

    __slots__ = (
        "cancelled",
        "chunked",
        "chunks",
        "done",
        "drop",
        "first",
        "gen",
        "itl",
        "sent",
        "transport",
    )

    def __init__(
        self,
        gen: Generation,
        transport: asyncio.Transport,
        chunks: ChunkWriter | ResponsesWriter | MessagesWriter,
        chunked: bool,
        drop: int | None,
        itl: float,
    ) -> None:
        self.gen = gen
        self.transport = transport
        self.chunks = chunks
        self.chunked = chunked
        self.drop = drop
        self.itl = itl
        self.sent = 0
        self.first = True
        self.cancelled = False
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def send(self, event: bytes) -> None:
        if self.chunked:
            self.transport.write(b"%x\r\n%b\r\n" % (len(event), event))
        else:
            self.transport.write(event)

    def _end(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)

    def __call__(self, due: float) -> float | None:
        if self.cancelled or self.done.done():
            return None
        if self.transport.is_closing():
            self._end("closed")
            return None
        gen, chunks = self.gen, self.chunks
        engine = gen.engine
        if engine.stalled:
            return due + STALL_POLL_S
        held = engine.pauses.hold_until(due)
        if held is not None:
            return held
        if self.first:  # time to first token: echo and the role chunk come with it
            self.first = False
            if gen.req.echo:
                self.send(chunks.content(gen.req.echo, 0))
            if chunks.chat:
                self.send(chunks.role(0))
            if self.drop == 0:
                self._end("drop")
                return None
        pieces, finished = gen.step()
        for piece in pieces:
            self.send(chunks.content(piece, gen.completion_tokens))
            self.sent += 1
            if self.drop is not None and self.sent >= self.drop:
                self._end("drop")
                return None
        if finished:
            self._end("done")
            return None
        return due + self.itl


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
        app = web.Application(middlewares=[self._track], client_max_size=64 * 1024 * 1024)
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
        r.add_get("/_control/faults", self.get_faults)
        r.add_post("/_control/faults", self.set_faults)
        r.add_post("/_control/reset", self.reset)
        r.add_get("/_control/stats", self.stats)
        r.add_delete("/_control/stats", self.clear_stats)
        return app

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
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

    # -- control API -------------------------------------------------------------

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
        doc = self.log.to_json()
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
        self.log.reset()
        self.engine.ticker.reset_lateness()
        return json_response({"cleared": True})


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
