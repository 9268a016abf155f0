"""SSE streams of the simulator: the bytes of each chunk and the per-token step.

:class:`ChunkWriter` writes completions and chat chunks in vLLM's shapes
(:mod:`.vllm_apis` has the Responses and Messages writers with the same
interface); :class:`SseJob` is one stream's step on the engine's ticker.
Chunks are pre-encoded so a token costs a few byte concatenations.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .engine import STALL_POLL_S, Generation
from .vllm_apis import MessagesWriter, ResponsesWriter
from .vllm_http import dumps
from .vllm_protocol import GenerationRequest

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"

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
        head = dumps(self.head)[:-1].encode()  # '{"id":...,"model":"m"' (left open)
        if self.chat:
            self._pre = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
            self._post = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._pre = b"data: " + head + b',"choices":[{"index":0,"text":'
            self._post = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'

    def _event(self, doc: dict[str, Any]) -> bytes:
        return b"data: " + dumps(doc).encode() + b"\n\n"

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
