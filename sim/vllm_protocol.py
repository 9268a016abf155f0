"""Validation of OpenAI / vLLM request bodies into plain generation requests.

Kept free of HTTP so tests can drive it directly. Every problem raises
:class:`BadRequest` with the status vLLM would answer (400, or 404 for an
unknown model) and the offending parameter, so the server can turn it into
an OpenAI-shaped error body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import textgen


class BadRequest(Exception):
    """Invalid request: ``status`` (400/404), a message and the parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


@dataclass
class Limits:
    """Engine settings that validation depends on."""

    model: str
    max_model_len: int = 4096
    default_max_tokens: int = 128
    completion_default_max_tokens: int = 16
    embedding_dim: int = 256


@dataclass
class GenerationRequest:
    """What the engine needs to serve one completion or chat request."""

    kind: str  # "completion" | "chat"
    model: str
    prompt: str  # the rendered prompt text
    prompt_tokens: int
    max_tokens: int
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    stop: list[str] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    echo: str = ""  # completions: prompt text to echo before the output


@dataclass
class EmbeddingRequest:
    model: str
    inputs: list[str]
    prompt_tokens: int
    dimensions: int
    encoding_format: str = "float"


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_model(body: dict[str, Any], limits: Limits) -> str:
    model = body.get("model")
    if model is None:  # vLLM: the model is optional and defaults to the served one
        return limits.model
    if not isinstance(model, str):
        raise BadRequest("'model' must be a string.", "model")
    if model != limits.model:
        raise BadRequest(f"The model `{model}` does not exist.", "model", status=404)
    return model


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be a boolean.", key)
    return value


def _common(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    """stream, include_usage, continuous_usage_stats; and the checks on n, numbers."""
    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise BadRequest("Only n=1 is supported by the simulator.", "n")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise BadRequest("Only best_of=1 is supported by the simulator.", "best_of")
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"'{key}' must be a number.", key)
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest("'seed' must be an integer.", "seed")
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = continuous = False
    if opts is not None:
        if not stream:
            raise BadRequest("Stream options can only be defined when `stream=True`.", "stream")
        if not isinstance(opts, dict):
            raise BadRequest("'stream_options' must be an object.", "stream_options")
        include_usage = _bool(opts, "include_usage", False)
        continuous = include_usage and _bool(opts, "continuous_usage_stats", False)
    return stream, include_usage, continuous


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings.", "stop")
    return [s for s in stop if s]


def _max_tokens(
    body: dict[str, Any], keys: tuple[str, ...], default: int, prompt_tokens: int, limits: Limits
) -> int:
    value, key = None, keys[0]
    for k in keys:
        if body.get(k) is not None:
            value, key = body[k], k
            break
    room = limits.max_model_len - prompt_tokens
    if prompt_tokens >= limits.max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, "
            f"your request has {prompt_tokens} input tokens. Please reduce the length of the "
            "input messages.",
            "messages" if "max_completion_tokens" in keys else "prompt",
        )
    if value is None:
        return min(default, room)
    if not _is_int(value):
        raise BadRequest(f"'{key}' must be an integer.", key)
    if value < 1:
        raise BadRequest(f"'{key}' must be at least 1, got {value}.", key)
    if value > room:
        raise BadRequest(
            f"'{key}' is too large: {value}. This model's maximum context length is "
            f"{limits.max_model_len} tokens and your request has {prompt_tokens} input tokens "
            f"({value} > {limits.max_model_len} - {prompt_tokens}).",
            key,
        )
    return value


def parse_completion(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    """``POST /v1/completions``: the prompt is text (one string, or a list of one)."""
    model = _check_model(body, limits)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise BadRequest(
                "The simulator takes one text prompt (a string or a list of one string).",
                "prompt",
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string.", "prompt")
    flags = _common(body)
    prompt_tokens = textgen.count_tokens(prompt)
    max_tokens = _max_tokens(
        body, ("max_tokens",), limits.completion_default_max_tokens, prompt_tokens, limits
    )
    if body.get("suffix") is not None:
        raise BadRequest("'suffix' is not supported.", "suffix")
    return _generation(
        "completion",
        body,
        flags,
        model,
        prompt,
        prompt_tokens,
        max_tokens,
        echo=prompt if _bool(body, "echo", False) else "",
    )


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list.", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"messages[{i}] must be an object.", "messages")
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"messages[{i}].role must be a non-empty string.", "messages")
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise BadRequest(
                f"messages[{i}].content must be a string or a list of parts.", "messages"
            )
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise BadRequest(f"messages[{i}].content parts must be objects.", "messages")
    return messages


def parse_chat(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    """``POST /v1/chat/completions`` with vLLM's continuation extensions."""
    model = _check_model(body, limits)
    messages = _messages(body)
    add_generation_prompt = _bool(body, "add_generation_prompt", True)
    continue_final = _bool(body, "continue_final_message", False)
    if add_generation_prompt and continue_final:
        raise BadRequest(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
            "continue_final_message",
        )
    flags = _common(body)
    prompt = textgen.render_chat(
        messages,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final,
    )
    prompt_tokens = textgen.count_tokens(prompt)
    max_tokens = _max_tokens(
        body,
        ("max_completion_tokens", "max_tokens"),
        limits.default_max_tokens,
        prompt_tokens,
        limits,
    )
    return _generation("chat", body, flags, model, prompt, prompt_tokens, max_tokens)


def _generation(
    kind: str,
    body: dict[str, Any],
    flags: tuple[bool, bool, bool],
    model: str,
    prompt: str,
    prompt_tokens: int,
    max_tokens: int,
    **extra: Any,
) -> GenerationRequest:
    """The fields completions and chat share, read the same way for both."""
    stream, include_usage, continuous = flags
    return GenerationRequest(
        kind=kind,
        model=model,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        continuous_usage=continuous,
        stop=_stop(body),
        include_stop_str_in_output=_bool(body, "include_stop_str_in_output", False),
        **extra,
    )


def parse_embedding(body: dict[str, Any], limits: Limits) -> EmbeddingRequest:
    """``POST /v1/embeddings``: a string, a list of strings, or token-id lists."""
    model = _check_model(body, limits)
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(_is_int(x) for x in raw):
        inputs = [" ".join(map(str, raw))]
    elif (
        isinstance(raw, list)
        and raw
        and all(isinstance(x, list) and all(_is_int(t) for t in x) for x in raw)
    ):
        inputs = [" ".join(map(str, x)) for x in raw]
    else:
        raise BadRequest(
            "'input' must be a string, a non-empty list of strings, or token-id lists.", "input"
        )
    counts = [textgen.count_tokens(text) for text in inputs]
    for c in counts:
        if c > limits.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {limits.max_model_len} tokens. "
                f"However, you requested {c} tokens in the input for embedding generation. "
                "Please reduce the length of the input.",
                "input",
            )
    dims = body.get("dimensions")
    if dims is None:
        dims = limits.embedding_dim
    elif not _is_int(dims) or not 1 <= dims <= 8192:
        raise BadRequest("'dimensions' must be an integer between 1 and 8192.", "dimensions")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return EmbeddingRequest(model, inputs, sum(counts), dims, fmt)


def _responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The Responses API ``input`` (a string or a list of message items) as chat messages."""
    raw = body.get("input")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise BadRequest("'instructions' must be a string.", "instructions")
        messages.append({"role": "system", "content": instructions})
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'input' must be a string or a non-empty list of items.", "input")
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise BadRequest(f"input[{i}] must be a message item.", "input")
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or not isinstance(content, str | list):
            raise BadRequest(f"input[{i}] needs a role and a content.", "input")
        parts = content if isinstance(content, str) else [
            {**p, "type": "text"} if isinstance(p, dict) and "text" in p else p for p in content
        ]  # fmt: skip
        messages.append({"role": role, "content": parts})
    return messages


def parse_responses(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    """``POST /v1/responses``: ``input`` and ``instructions`` rendered like a chat."""
    model = _check_model(body, limits)
    if body.get("previous_response_id") is not None:
        raise BadRequest(
            "The simulator stores no responses: previous_response_id is not supported.",
            "previous_response_id",
            status=404,
        )
    messages = _responses_messages(body)
    prompt = textgen.render_chat(messages, add_generation_prompt=True)
    prompt_tokens = textgen.count_tokens(prompt)
    max_tokens = _max_tokens(
        body, ("max_output_tokens",), limits.default_max_tokens, prompt_tokens, limits
    )
    stream = _bool(body, "stream", False)
    return GenerationRequest("responses", model, prompt, prompt_tokens, max_tokens, stream=stream)


def parse_messages(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    """``POST /v1/messages`` (Anthropic): ``system`` and ``messages`` rendered like a chat."""
    model = _check_model(body, limits)
    messages = _messages(body)
    system = body.get("system")
    if isinstance(system, list):
        system = textgen.message_text(system)
    if system is not None and not isinstance(system, str):
        raise BadRequest("'system' must be a string or a list of text blocks.", "system")
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    prompt = textgen.render_chat(messages, add_generation_prompt=True)
    prompt_tokens = textgen.count_tokens(prompt)
    if body.get("max_tokens") is None:
        raise BadRequest("'max_tokens' is required.", "max_tokens")
    max_tokens = _max_tokens(body, ("max_tokens",), 0, prompt_tokens, limits)
    stream = _bool(body, "stream", False)
    return GenerationRequest("messages", model, prompt, prompt_tokens, max_tokens, stream=stream)
