"""What a request's prompt starts with, as keys a router can place it by.

The engines cache the KV of prompt prefixes in blocks; a request that starts
with text a node has seen is prefilled there for (almost) nothing. The router
has no tokenizer and no view of the engines' caches, so it works on text:

- ``chain``: one key per ``block_chars`` characters of the rendered prompt,
  each a hash of its block *and* every block before it (as vLLM chains its
  block hashes), so two prompts share the first *k* keys exactly when they
  share the first *k* blocks of text. Turn N+1 of a conversation repeats
  turn N's prompt and answer, so its chain extends turn N's.
- ``anchor``: the key the request is *placed* by. For chat it covers the
  messages up to and including the first user message: it is the same for
  every turn of one conversation and differs between conversations that
  share a system prompt, so consistent hashing keeps a conversation on one
  node while spreading conversations. A bare prompt (completions) has no
  such boundary: its anchor covers the first ``anchor_chars`` characters (or
  the whole prompt when it is shorter).

Rendering is the router's own (role and text per message), not the engine's
chat template: it only has to be the same for the same messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PrefixKey:
    anchor: str
    chain: tuple[str, ...]


def _hash(data: bytes, parent: bytes = b"") -> bytes:
    return hashlib.blake2b(parent + data, digest_size=12).digest()


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _render_messages(messages: list[Any]) -> tuple[str, int]:
    """(the rendered messages, where the first user message ends in it)."""
    out: list[str] = []
    size = 0
    end = -1
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        piece = f"<{role if isinstance(role, str) else ''}>{_text(msg.get('content'))}\n"
        out.append(piece)
        size += len(piece)
        if end < 0 and role == "user":
            end = size
    return "".join(out), end if end >= 0 else size


def _prompt_text(doc: dict[str, Any]) -> str | None:
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str) and len(prompt) == 1:
            return first
        if all(isinstance(t, int) for t in prompt):  # token ids
            return ",".join(str(t) for t in prompt)
    return None


def rendered(doc: dict[str, Any], anchor_chars: int) -> tuple[str, int] | None:
    """(the prompt text, the length of its anchor), or None for a body with no prompt."""
    messages = doc.get("messages")
    if isinstance(messages, list) and messages:
        return _render_messages(messages)
    text = _prompt_text(doc)
    if text is None:
        instructions = doc.get("instructions")
        raw = doc.get("input")  # Responses API
        if isinstance(raw, str):
            text = raw
        elif isinstance(raw, list):
            text, end = _render_messages(raw)
            prefix = instructions if isinstance(instructions, str) else ""
            return prefix + text, len(prefix) + end
        else:
            return None
        if isinstance(instructions, str):
            text = instructions + "\n" + text
    return text, min(len(text), anchor_chars)


def _blocks(text: str, block_chars: int) -> Iterator[str]:
    for start in range(0, len(text) - block_chars + 1, block_chars):
        yield text[start : start + block_chars]


def prefix_key(
    doc: dict[str, Any], *, block_chars: int = 64, anchor_chars: int = 1024
) -> PrefixKey | None:
    """The request's placement keys, or None when its body has no prompt to key by."""
    found = rendered(doc, anchor_chars)
    if found is None:
        return None
    text, anchor_len = found
    if not text:
        return None
    chain: list[str] = []
    parent = b""
    for block in _blocks(text, block_chars):
        parent = _hash(block.encode("utf-8", "surrogatepass"), parent)
        chain.append(parent.hex())
    anchor = _hash(text[:anchor_len].encode("utf-8", "surrogatepass")).hex()
    return PrefixKey(anchor=anchor, chain=tuple(chain))
