"""The simulator's vLLM endpoints beyond completions, chat and embeddings.

- ``POST /v1/responses``: the Responses API, non-streaming and streaming,
  with the same deterministic text as a chat request with the same messages
  (``instructions`` is the system message). The stream has vLLM's framing:
  ``event: <type>`` + ``data: <json>``, ``response.created`` and
  ``response.in_progress`` at once (before prefill, as vLLM sends them), one
  ``response.output_text.delta`` per token, and ``response.completed`` last
  (the response's ``status`` is ``incomplete`` when ``max_output_tokens``
  ended it). The drop fault cuts it after that many deltas.
- ``POST /v1/messages``: Anthropic Messages, the same text again, streamed
  as ``message_start`` … ``content_block_delta`` (one per token) …
  ``message_stop``.
- ``POST /tokenize`` and ``/detokenize``: the simulator's tokenizer, ids
  that are the same on every simulator process.
- ``POST /rerank``, ``/v1/rerank``, ``/v2/rerank``, ``/score``,
  ``/v1/score``: a deterministic relevance score per document.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import textgen
from .vllm_protocol import (
    BadRequest,
    GenerationRequest,
    parse_json,
    parse_messages,
    parse_responses,
)

if TYPE_CHECKING:
    from .vllm_server import SimServer


def _event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(doc).encode() + b"\n\n"


class ResponsesWriter:
    """SSE events of one streamed Responses API request (the ChunkWriter interface)."""

    chat = True  # SseJob sends role() at the first token: the output item opens there

    def __init__(self, req: GenerationRequest, response_id: str, created: int) -> None:
        self.req = req
        self.response_id = response_id
        self.created = created
        self.item_id = "msg_" + uuid.uuid4().hex
        self.seq = 0
        self.text: list[str] = []

    def _next(self, kind: str, **fields: Any) -> bytes:
        doc = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return _event(kind, doc)

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    def preamble(self) -> bytes:
        resp = response_doc(self.req, self.response_id, self.created, None, "in_progress", 0)
        return self._next("response.created", response=resp) + self._next(
            "response.in_progress", response=resp
        )

    def role(self, completion_tokens: int) -> bytes:
        item = {"type": "message", "id": self.item_id, "status": "in_progress",
                "role": "assistant", "content": []}  # fmt: skip
        part = {"type": "output_text", "text": "", "annotations": []}
        return self._next("response.output_item.added", output_index=0, item=item) + self._next(
            "response.content_part.added", **self._where(), part=part
        )

    def content(self, text: str, completion_tokens: int) -> bytes:
        self.text.append(text)
        return self._next("response.output_text.delta", **self._where(), delta=text, logprobs=[])

    def closing(self, finish_reason: str, stop_reason: str | None, completion_tokens: int) -> bytes:
        text = "".join(self.text)
        part = {"type": "output_text", "text": text, "annotations": []}
        status = "incomplete" if finish_reason == "length" else "completed"
        resp = response_doc(
            self.req, self.response_id, self.created, text, status, completion_tokens, self.item_id
        )
        return b"".join(
            (
                self._next("response.output_text.done", **self._where(), text=text, logprobs=[]),
                self._next("response.content_part.done", **self._where(), part=part),
                self._next("response.output_item.done", output_index=0, item=resp["output"][0]),
                self._next("response.completed", response=resp),
            )
        )


class MessagesWriter:
    """SSE events of one streamed Anthropic Messages request (the ChunkWriter interface)."""

    chat = True

    def __init__(self, req: GenerationRequest, message_id: str) -> None:
        self.req = req
        self.message_id = message_id

    def preamble(self) -> bytes:
        message = message_doc(self.req, self.message_id, None, None, 0)
        return _event("message_start", {"type": "message_start", "message": message})

    def role(self, completion_tokens: int) -> bytes:
        block = {"type": "content_block_start", "index": 0,
                 "content_block": {"type": "text", "text": ""}}  # fmt: skip
        return _event("content_block_start", block)

    def content(self, text: str, completion_tokens: int) -> bytes:
        delta = {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": text}}  # fmt: skip
        return _event("content_block_delta", delta)

    def closing(self, finish_reason: str, stop_reason: str | None, completion_tokens: int) -> bytes:
        delta = {"stop_reason": _anthropic_stop(finish_reason), "stop_sequence": None}
        end = {"type": "message_delta", "delta": delta,
               "usage": {"output_tokens": completion_tokens}}  # fmt: skip
        return (
            _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _event("message_delta", end)
            + _event("message_stop", {"type": "message_stop"})
        )


def _anthropic_stop(finish_reason: str | None) -> str | None:
    return {"length": "max_tokens", "stop": "end_turn"}.get(finish_reason or "")


def message_doc(
    req: GenerationRequest, message_id: str, text: str | None, finish: str | None, tokens: int
) -> dict[str, Any]:
    """An Anthropic ``message`` object (``text`` None: no content yet)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": _anthropic_stop(finish),
        "stop_sequence": None,
        "usage": {"input_tokens": req.prompt_tokens, "output_tokens": tokens},
    }


def response_doc(
    req: GenerationRequest,
    response_id: str,
    created: int,
    text: str | None,
    status: str,
    completion_tokens: int,
    item_id: str | None = None,
) -> dict[str, Any]:
    """A Responses API ``response`` object (``text`` None: no output yet)."""
    output = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": item_id or "msg_" + uuid.uuid4().hex,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    p, c = req.prompt_tokens, completion_tokens
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": req.model,
        "status": status,
        "output": output,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "error": None,
        "max_output_tokens": req.max_tokens,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": p,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": c,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": p + c,
        },
    }


class ExtraApis:
    """Handlers for the endpoints above, sharing the server's engine and limits."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/responses", self.responses)
        router.add_post("/v1/messages", self.messages)
        router.add_post("/tokenize", self.tokenize)
        router.add_post("/detokenize", self.detokenize)
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            router.add_post(path, self.rerank)
        for path in ("/score", "/v1/score"):
            router.add_post(path, self.score)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_json(await request.read())

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.server.settings.model
        if model != self.server.settings.model:
            raise BadRequest(f"The model `{model}` does not exist.", "model", status=404)
        return model

    # -- Responses API -------------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        req = parse_responses(await self._body(request), self.server.limits)
        response_id = "resp_" + uuid.uuid4().hex
        created = int(time.time())
        if req.stream:
            writer = ResponsesWriter(req, response_id, created)
            return await self.server.generate(request, req, writer)
        return await self.server.generate(
            request,
            req,
            None,
            body=lambda gen, text: response_doc(
                req,
                response_id,
                created,
                text,
                "incomplete" if gen.finish_reason == "length" else "completed",
                gen.completion_tokens,
            ),
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        req = parse_messages(await self._body(request), self.server.limits)
        message_id = "msg_" + uuid.uuid4().hex
        if req.stream:
            return await self.server.generate(request, req, MessagesWriter(req, message_id))
        return await self.server.generate(
            request,
            req,
            None,
            body=lambda gen, text: message_doc(
                req, message_id, text, gen.finish_reason, gen.completion_tokens
            ),
        )

    # -- tokenizer -------------------------------------------------------------------

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = self._model(body)
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise BadRequest("'messages' must be a list of messages.", "messages")
            add = body.get("add_generation_prompt", True) is not False
            text = textgen.render_chat(messages, add_generation_prompt=add)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise BadRequest("'prompt' must be a string.", "prompt")
            text = prompt
        ids = textgen.token_ids(text)
        doc: dict[str, Any] = {
            "count": len(ids),
            "max_model_len": self.server.settings.max_model_len,
            "tokens": ids,
            "token_strs": textgen.tokenize(text) if body.get("return_token_strs") else None,
        }
        del model
        return web.json_response(doc)

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self._model(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise BadRequest("'tokens' must be a list of integers.", "tokens")
        try:
            return web.json_response({"prompt": textgen.detokenize(tokens)})
        except ValueError as exc:
            raise BadRequest(str(exc), "tokens") from None

    # -- scoring ---------------------------------------------------------------------

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = self._model(body)
        query = body.get("query")
        docs = body.get("documents")
        if not isinstance(query, str):
            raise BadRequest("'query' must be a string.", "query")
        if not isinstance(docs, list) or not docs:
            raise BadRequest("'documents' must be a non-empty list.", "documents")
        given = [d.get("text") if isinstance(d, dict) else d for d in docs]
        texts = [t for t in given if isinstance(t, str)]
        if len(texts) != len(given):
            raise BadRequest("each document must be a string or {'text': ...}.", "documents")
        top_n = body.get("top_n") or len(texts)
        scores = [textgen.relevance(query, t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])[:top_n]
        results = [
            {"index": i, "document": {"text": texts[i]}, "relevance_score": scores[i]}
            for i in order
        ]
        tokens = sum(textgen.count_tokens(query + t) for t in texts)
        return web.json_response(
            {
                "id": "rerank-" + uuid.uuid4().hex,
                "model": model,
                "usage": {"total_tokens": tokens},
                "results": results,
            }
        )

    async def score(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        model = self._model(body)
        first, second = body.get("text_1"), body.get("text_2")
        lefts = [first] if isinstance(first, str) else first
        rights = [second] if isinstance(second, str) else second
        if not isinstance(lefts, list) or not isinstance(rights, list) or not rights:
            raise BadRequest("'text_1' and 'text_2' must be strings or lists.", "text_2")
        if len(lefts) == 1:
            lefts = lefts * len(rights)
        if len(lefts) != len(rights) or not all(isinstance(t, str) for t in lefts + rights):
            raise BadRequest("'text_1' must be one string or as many as 'text_2'.", "text_1")
        data = [
            {"index": i, "object": "score", "score": textgen.relevance(a, b)}
            for i, (a, b) in enumerate(zip(lefts, rights, strict=True))
        ]
        tokens = sum(textgen.count_tokens(a + b) for a, b in zip(lefts, rights, strict=True))
        return web.json_response(
            {"id": "score-" + uuid.uuid4().hex, "object": "list", "created": int(time.time()),
             "model": model, "data": data,
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}
        )  # fmt: skip
