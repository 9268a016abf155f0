"""Rewriting upstream chunks so every attempt reads as one stream to the client.

After a seam, a continuation's chunks carry their own ``id``, ``created``,
``model`` and ``system_fingerprint``, and its ``usage`` counts only its own
prompt (which now contains the text so far) and tokens. :class:`ChunkRewriter`
restates both: every chunk gets the first upstream's identity, and every
usage is restated for the whole client stream from the :class:`Progress`
the resumer keeps. Before any seam nothing changes, and a chunk whose
identity already matches goes out as its original bytes. I/O-free.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .sse import encode_json

_IDENTITY = ("id", "created", "model")


@dataclass
class Progress:
    """Token accounting across the upstream attempts of one stream."""

    attempt: int = 0  # index of the current upstream attempt (0 = original request)
    tokens_before: int = 0  # tokens counted in earlier attempts
    attempt_tokens: int = 0  # tokens counted in the current attempt
    orig_prompt_tokens: int | None = None  # the original prompt's size, once known
    probing: bool = False  # the current attempt only measures prompt tokens
    probe_usage: dict[str, Any] | None = None
    last_usage: dict[str, Any] | None = None  # upstream usage seen this attempt

    @property
    def total_tokens(self) -> int:
        return self.tokens_before + self.attempt_tokens


class ChunkRewriter:
    """The client-visible identity and usage of one stream."""

    def __init__(self, chat: bool, model: Any, progress: Progress) -> None:
        self.chat = chat
        self.model = model
        self.progress = progress
        self.meta: dict[str, Any] | None = None  # identity, from the first upstream chunk
        self.template: dict[str, Any] | None = None  # last choices chunk, to synthesise chunks

    def observe(self, obj: dict[str, Any]) -> None:
        """Remember the first upstream chunk's identity."""
        if self.meta is None:
            self.meta = {k: obj[k] for k in _IDENTITY if k in obj}
            if "system_fingerprint" in obj:
                self.meta["system_fingerprint"] = obj["system_fingerprint"]

    def rewrite(self, obj: dict[str, Any], raw: bytes, modified: bool) -> bytes:
        """The client bytes for ``obj``: its original bytes when nothing had to change."""
        if self.progress.attempt > 0:
            if self.meta is not None:
                modified = self._restate_identity(obj) or modified
            if isinstance(obj.get("usage"), dict):
                obj["usage"] = self.fixed_usage(obj["usage"])
                modified = True
        return encode_json(obj) if modified else raw

    def _restate_identity(self, obj: dict[str, Any]) -> bool:
        meta = self.meta or {}
        changed = False
        for key in _IDENTITY:
            if key in meta and obj.get(key) != meta[key]:
                obj[key] = meta[key]
                changed = True
        if "system_fingerprint" in meta:
            if obj.get("system_fingerprint") != meta["system_fingerprint"]:
                obj["system_fingerprint"] = meta["system_fingerprint"]
                changed = True
        elif "system_fingerprint" in obj:
            del obj["system_fingerprint"]
            changed = True
        return changed

    def fixed_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """``usage`` of the current attempt restated for the whole client stream.

        prompt_tokens  = original prompt tokens
                       = (a continuation's prompt tokens) - (tokens generated before it)
        completion_tokens = all completion tokens across attempts.
        """
        p = self.progress
        fixed = dict(usage)
        prompt = p.orig_prompt_tokens
        if prompt is None:
            prompt = max(0, int(usage.get("prompt_tokens", 0)) - p.tokens_before)
        if p.probing or "completion_tokens" not in usage:
            completion = p.total_tokens
        else:
            completion = p.tokens_before + int(usage["completion_tokens"])
        fixed["prompt_tokens"] = prompt
        fixed["completion_tokens"] = completion
        fixed["total_tokens"] = prompt + completion
        return fixed

    def identity(self) -> dict[str, Any]:
        """A synthesised chunk's head: the stream's identity (made up if no chunk came)."""
        meta = dict(self.meta or {})
        if "id" not in meta:
            meta["id"] = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        meta.setdefault("created", int(time.time()))
        meta.setdefault("model", self.model)
        self.meta = meta
        head = {
            "id": meta["id"],
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": meta["created"],
            "model": meta["model"],
        }
        if "system_fingerprint" in meta:
            head["system_fingerprint"] = meta["system_fingerprint"]
        return head

    def usage_chunk(self, upstream: dict[str, Any] | None) -> bytes:
        """The one final usage chunk the client sees."""
        p = self.progress
        obj = self.identity()
        if upstream is not None and upstream.get("object"):
            obj["object"] = upstream["object"]
        obj["choices"] = []
        if p.probing:
            base = p.probe_usage or {}
        else:
            base = (upstream or {}).get("usage") or p.last_usage or {}
        obj["usage"] = self.fixed_usage(base)
        return encode_json(obj)

    def finish_chunk(self, reason: str | None, text: str) -> bytes:
        """A synthesised last chunk (no upstream produced it)."""
        if self.template is not None:
            obj = copy.deepcopy(self.template)
            obj.update(self.identity())
            choice = obj["choices"][0]
        else:
            obj = self.identity()
            choice = {"index": 0, "logprobs": None}
            obj["choices"] = [choice]
        if self.chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        choice["finish_reason"] = reason
        if "stop_reason" in choice:
            choice["stop_reason"] = None
        if isinstance(obj.get("usage"), dict):
            obj["usage"] = None
        return encode_json(obj)
