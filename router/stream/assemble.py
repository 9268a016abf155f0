"""A non-streaming answer assembled from the chunks of a stream (I/O-free).

A non-streaming request gives the router nothing to watch while the engine
generates, and nothing to resume from when the node dies: the whole
generation starts over. With ``routing.assemble_non_streaming`` the router
sends such a request to the engine as a stream instead (``stream: true``,
``stream_options.include_usage``) and builds the answer the client asked for
from the chunks, so a stalled stream is seen and a broken one is resumed from
its partial text (:mod:`.resume`), while the client still gets one JSON body.

This module holds the two pure parts:

* :func:`not_assembled` says which requests may go this way: only those whose
  non-streaming answer the chunks determine field for field (no ``echo``,
  ``prompt_logprobs``, ``best_of``, beam search, tools, structured output,
  ...); everything else is forwarded as it came;
* :class:`Assembler` is fed every parsed chunk of the client stream (after
  resume has stitched the attempts together) and returns the body the engine
  would have answered: per choice (by ``index``) the concatenated text or
  message content, role, ``reasoning_content``, tool calls (each call's
  ``function.arguments`` concatenated), logprobs concatenated, the
  ``finish_reason`` and ``stop_reason`` of the finishing chunk; the stream's
  ``id``, ``created``, ``model`` and ``system_fingerprint``; the final usage.

The shapes are vLLM's: ``object`` ``text_completion`` / ``chat.completion``,
a chat message always carries ``tool_calls`` (``[]`` without calls), keys in
the engine's order. A field the engine writes as ``null`` in its
non-streaming answer and leaves out of its chunks (vLLM's ``refusal``,
``annotations``, ``prompt_logprobs``, ... at their defaults) is absent here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .resume_request import CHAT, COMPLETIONS, one_text_prompt

#: Request keys whose answer the chunks do not carry (or carry differently).
_FORWARDED_KEYS = {
    "echo": "echo (the prompt is streamed as a chunk, not prefixed to the text)",
    "prompt_logprobs": "prompt_logprobs",
    "suffix": "suffix",
    "use_beam_search": "beam search",
    "return_token_ids": "return_token_ids",
    "kv_transfer_params": "kv_transfer_params",
    "functions": "function calling",
    "guided_json": "guided decoding",
    "guided_regex": "guided decoding",
    "guided_choice": "guided decoding",
    "guided_grammar": "guided decoding",
    "structured_outputs": "structured outputs",
}


class NotAssembled(Exception):
    """The chunks did not make a whole answer (a choice never finished)."""


def not_assembled(path: str, body: Mapping[str, Any]) -> str | None:
    """Why this non-streaming request is forwarded as it came; None: it may be assembled."""
    if path not in (COMPLETIONS, CHAT):
        return f"{path} is not a completions or chat request"
    if body.get("stream") is True:
        return "already a stream"
    if "stream_options" in body:
        return "stream_options on a non-streaming request (the engine answers it)"
    for key, why in _FORWARDED_KEYS.items():
        value = body.get(key)
        if value is not None and value is not False:
            return why
    n, best_of = body.get("n", 1), body.get("best_of")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        return "n is not a positive integer (the engine answers it)"
    if best_of is not None and best_of != 1:
        return "best_of"
    if path == COMPLETIONS:
        if not one_text_prompt(body.get("prompt")):
            return "prompt is not a single string"
    else:
        if body.get("tools") and body.get("tool_choice", "auto") != "none":
            return "tools (engines parse tool calls separately for streams)"
        if body.get("function_call") not in (None, "none"):
            return "function calling"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return "response_format"
    return None


@dataclass(frozen=True)
class StreamForm:
    """The streaming request whose chunks make a non-streaming request's answer."""

    doc: dict[str, Any]
    body: bytes

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> StreamForm:
        """``body`` as a stream with a final usage chunk (the answer's ``usage``)."""
        doc = dict(body)
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
        return cls(doc, json.dumps(doc).encode())


@dataclass
class _Choice:
    """One choice's parts, as the chunks bring them."""

    index: int
    pieces: list[str] = field(default_factory=list)  # text / message content
    content_seen: bool = False  # chat: a delta carried "content" (else content is null)
    role: str | None = None
    reasoning: dict[str, list[str]] = field(default_factory=dict)  # key -> pieces
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: dict[str, list[Any]] | None = None
    logprobs_key: bool = False  # the chunks carry a "logprobs" key (null or not)
    finish_reason: str | None = None
    stop_reason: Any = None
    stop_reason_key: bool = False


class Assembler:
    """Feed parsed chunks of one (completions or chat) stream; :meth:`result` is the answer."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.head: dict[str, Any] | None = None
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.chunks = 0

    def feed(self, chunk: Mapping[str, Any]) -> None:
        """One chunk (an event's JSON object, ``[DONE]`` and error events excluded)."""
        self.chunks += 1
        if self.head is None:
            self.head = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
        if "system_fingerprint" in chunk and chunk["system_fingerprint"] is not None:
            self.head["system_fingerprint"] = chunk["system_fingerprint"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for raw in chunk.get("choices") or ():
            if isinstance(raw, dict):
                self._choice(raw)

    def _choice(self, raw: Mapping[str, Any]) -> None:
        index = raw.get("index", 0)
        index = index if isinstance(index, int) else 0
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = _Choice(index)
        if self.chat:
            self._delta(choice, raw.get("delta"))
        elif isinstance(raw.get("text"), str):
            choice.pieces.append(raw["text"])
        if "logprobs" in raw:
            choice.logprobs_key = True
            if isinstance(raw["logprobs"], dict):
                _extend_logprobs(choice, raw["logprobs"])
        finish = raw.get("finish_reason")
        if "stop_reason" in raw:
            choice.stop_reason_key = True
            if finish or raw["stop_reason"] is not None:
                choice.stop_reason = raw["stop_reason"]
        if finish:
            choice.finish_reason = finish

    def _delta(self, choice: _Choice, delta: Any) -> None:
        if not isinstance(delta, dict):
            return
        if isinstance(delta.get("role"), str):
            choice.role = choice.role or delta["role"]
        if "content" in delta and delta["content"] is not None:
            choice.content_seen = True
            choice.pieces.append(delta["content"])
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str):
                choice.reasoning.setdefault(key, []).append(delta[key])
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                _merge_tool_call(choice, call)

    def result(self) -> dict[str, Any]:
        """The non-streaming answer; raises :class:`NotAssembled` when a choice never finished."""
        if self.head is None or not self.choices:
            raise NotAssembled("the stream carried no choice")
        unfinished = [i for i, c in self.choices.items() if c.finish_reason is None]
        if unfinished:
            raise NotAssembled(f"choice {unfinished[0]} never finished")
        doc: dict[str, Any] = {
            "id": self.head.get("id"),
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.head.get("created"),
            "model": self.head.get("model"),
            "choices": [self._build(self.choices[i]) for i in sorted(self.choices)],
        }
        if "system_fingerprint" in self.head:
            doc["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            doc["usage"] = dict(self.usage)
        return doc

    def body(self) -> bytes:
        """:meth:`result` as the engine sends it: compact JSON, UTF-8."""
        return json.dumps(self.result(), separators=(",", ":"), ensure_ascii=False).encode()

    def _build(self, c: _Choice) -> dict[str, Any]:
        out: dict[str, Any] = {"index": c.index}
        if self.chat:
            message: dict[str, Any] = {
                "role": c.role or "assistant",
                "content": "".join(c.pieces) if c.content_seen else None,
            }
            message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
            for key, pieces in c.reasoning.items():
                message[key] = "".join(pieces)
            out["message"] = message
        else:
            out["text"] = "".join(c.pieces)
        if c.logprobs_key or c.logprobs is not None:
            out["logprobs"] = c.logprobs
        out["finish_reason"] = c.finish_reason
        if c.stop_reason_key:
            out["stop_reason"] = c.stop_reason
        return out


def _extend_logprobs(choice: _Choice, logprobs: Mapping[str, Any]) -> None:
    """Concatenate a chunk's logprobs: every list-valued field (completions' ``tokens``,
    ``token_logprobs``, ``top_logprobs``, ``text_offset``; chat's ``content``, ``refusal``)."""
    if choice.logprobs is None:
        choice.logprobs = {}
    for key, value in logprobs.items():
        if isinstance(value, list):
            choice.logprobs.setdefault(key, []).extend(value)  # a fresh parse: no copy
        elif key not in choice.logprobs:
            choice.logprobs[key] = value


def _merge_tool_call(choice: _Choice, call: Mapping[str, Any]) -> None:
    """One tool-call delta: the first carries ``id``/``type``/``function.name``, later ones
    pieces of ``function.arguments`` (the way OpenAI's own stream accumulators join them)."""
    index = call.get("index", len(choice.tool_calls))
    index = index if isinstance(index, int) else len(choice.tool_calls)
    merged = choice.tool_calls.get(index)
    if merged is None:
        merged = choice.tool_calls[index] = {
            "id": None,
            "type": "function",
            "function": {"name": "", "arguments": ""},
        }
    if call.get("id"):
        merged["id"] = call["id"]
    if call.get("type"):
        merged["type"] = call["type"]
    fn = call.get("function")
    if isinstance(fn, dict):
        if isinstance(fn.get("name"), str):
            merged["function"]["name"] += fn["name"]
        if isinstance(fn.get("arguments"), str):
            merged["function"]["arguments"] += fn["arguments"]
