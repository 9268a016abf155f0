"""What a streaming request allows on resume, and the body that continues it.

Pure functions of the client's request: whether it can be continued on
another node at all (:func:`not_resumable`), its limits
(:class:`RequestLimits`), and the continuation request itself
(:func:`continuation_body`: completions get the text so far appended to the
prompt; chat gets it as a final assistant message with vLLM's
``continue_final_message``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Request header that turns resume off for one request (``off``, ``false``, ``0``, ``no``).
RESUME_HEADER = "X-Spotrelay-Resume"
_OFF_VALUES = frozenset({"off", "false", "0", "no", "disable", "disabled"})

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

#: vLLM's (and OpenAI's) ``max_tokens`` default for ``/v1/completions``.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# Request fields whose semantics a continuation cannot preserve.
_GUIDED_KEYS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
)


def resume_off(value: str | None) -> bool:
    """True when the :data:`RESUME_HEADER` value asks for no resume (the web layer parses it)."""
    return value is not None and value.strip().lower() in _OFF_VALUES


def not_resumable(path: str, body: Any) -> str | None:
    """Why this streaming request cannot be continued elsewhere, or None if it can."""
    if path not in (COMPLETIONS, CHAT):
        return f"{path} streams are not resumable"
    if not isinstance(body, dict):
        return "request body is not a JSON object"
    if (body.get("n") or 1) != 1:
        return "n > 1"
    if (body.get("best_of") or 1) != 1:
        return "best_of > 1"
    if body.get("use_beam_search"):
        return "beam search"
    if body.get("echo"):
        return "echo"
    if body.get("prompt_logprobs") is not None:
        return "prompt_logprobs"
    if path == COMPLETIONS:
        if body.get("logprobs") is not None:
            return "logprobs"
        if body.get("suffix"):
            return "suffix"
        if not one_text_prompt(body.get("prompt")):
            return "prompt is not a single string (token ids or several prompts)"
    else:
        if body.get("logprobs") or body.get("top_logprobs"):
            return "logprobs"
        if body.get("tools") and body.get("tool_choice", "auto") != "none":
            return "tools"
        if body.get("functions") or body.get("function_call") not in (None, "none"):
            return "function calling"
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return "messages is not a list of objects"
        if body.get("continue_final_message"):
            last = messages[-1] if messages else {}
            if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
                return "continue_final_message without a final string assistant message"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return "response_format (guided decoding restarts at a seam)"
    for key in _GUIDED_KEYS:
        if body.get(key) is not None:
            return key
    return None


def one_text_prompt(prompt: Any) -> bool:
    """A completions ``prompt`` that is one string (or a list of one string)."""
    return isinstance(prompt, str) or (
        isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str)
    )


def stop_strings(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The request's non-empty ``stop`` strings."""
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return ()
    return tuple(s for s in stop if isinstance(s, str) and s)


@dataclass(frozen=True)
class RequestLimits:
    """The parts of a request the resumer tracks across attempts."""

    chat: bool
    include_usage: bool
    stops: tuple[str, ...]
    include_stop: bool
    min_tokens: int
    max_tokens: int | None  # None: no limit the router knows of

    @classmethod
    def of(cls, path: str, body: Mapping[str, Any]) -> RequestLimits:
        chat = path == CHAT
        opts = body.get("stream_options")
        opts = opts if isinstance(opts, dict) else {}
        min_tokens = body.get("min_tokens")
        return cls(
            chat=chat,
            include_usage=bool(opts.get("include_usage")),
            stops=stop_strings(body),
            include_stop=bool(body.get("include_stop_str_in_output")),
            min_tokens=min_tokens if isinstance(min_tokens, int) else 0,
            max_tokens=_max_tokens(chat, body),
        )


def _max_tokens(chat: bool, body: Mapping[str, Any]) -> int | None:
    if chat:
        for key in ("max_completion_tokens", "max_tokens"):
            value = body.get(key)
            if isinstance(value, int):
                return value
        return None
    value = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
    return value if isinstance(value, int) else None


def continuation_body(
    body: Mapping[str, Any], limits: RequestLimits, text: str, done: int, *, probe: bool = False
) -> dict[str, Any]:
    """The request that continues ``body`` after ``text`` (``done`` tokens) was generated.

    A *probe* is the same request cut to one token: it only measures how many
    prompt tokens the original request had, when the stream ended before the
    upstream reported usage.
    """
    new = copy.deepcopy(dict(body))
    if limits.chat:
        messages = new["messages"]
        if new.get("continue_final_message"):
            last = dict(messages[-1])
            last["content"] = last["content"] + text
            messages[-1] = last
        else:
            messages.append({"role": "assistant", "content": text})
        new["continue_final_message"] = True
        new["add_generation_prompt"] = False
        for key in ("max_completion_tokens", "max_tokens"):
            if isinstance(new.get(key), int):
                new[key] = max(1, new[key] - done)
    else:
        prompt = new["prompt"]
        new["prompt"] = (prompt if isinstance(prompt, str) else prompt[0]) + text
        if limits.max_tokens is not None:
            new["max_tokens"] = max(1, limits.max_tokens - done)
    if "min_tokens" in new:
        new["min_tokens"] = max(0, limits.min_tokens - done)
    new["stream"] = True
    if probe:
        for key in ("max_completion_tokens", "max_tokens"):
            if key in new or key == "max_tokens":
                new[key] = 1
        new.pop("min_tokens", None)
        new["stream_options"] = {"include_usage": True}
    return new
