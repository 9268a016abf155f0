"""The vLLM HTTP API as the router serves it: one table, as data.

Every path vLLM's OpenAI-compatible server answers is listed here with what
the router does with it, so one generic proxy path (``views/api.py``'s
``forward``) serves them all instead of a Flask route per endpoint:

- ``POST`` endpoints are routed by the body's ``model`` (JSON, or a form
  field for multipart uploads), or to the one model the fleet serves when
  the body names none (as vLLM defaults to its served model); retried on
  another node before the first byte; streamed per ``stream``.
- ``GET`` endpoints that describe the engine (``/version``, ``/load``, ...)
  are answered by any ready node.
- A stored response (retrieve, cancel) lives on the node that made it: each
  ready node is asked in turn until one knows it.
- Paths that act on *one* engine's state (cache resets, sleep, profiling,
  LoRA loading, weight updates) are refused with a 403 that says why: behind
  the router "the node" is an arbitrary member of a changing fleet.

The list was built from vLLM's route modules (``api_router.py`` files under
``vllm/entrypoints``) for the vLLM version the Terraform installs; see
docs/router.md ("Endpoints") for the table and its provenance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class BodyKind(StrEnum):
    JSON = "json"
    MULTIPART = "multipart"  # multipart/form-data: forwarded byte for byte
    NONE = "none"  # GET: no body


class StreamKind(StrEnum):
    """How a streamed answer is framed, which decides when it is complete."""

    NONE = "none"  # never streamed
    OPENAI = "openai-sse"  # data: chunks ending with data: [DONE] (completions, chat, audio)
    RESPONSES = "responses-sse"  # named events ending with response.completed/failed/incomplete
    ANTHROPIC = "anthropic-sse"  # named events ending with message_stop


class Routing(StrEnum):
    MODEL = "model"  # POST: by the body's model, retried before the first byte
    ANY_NODE = "any-node"  # GET: any ready node, retried on another
    STORED = "stored"  # state one node holds (a stored response): each node asked in turn
    LOCAL = "local"  # answered by the router itself (/v1/models)
    REFUSED = "refused"  # 403 with ``reason``


@dataclass(frozen=True)
class Endpoint:
    path: str  # Flask rule syntax for path parameters
    methods: tuple[str, ...] = ("POST",)
    body: BodyKind = BodyKind.JSON
    stream: StreamKind = StreamKind.NONE
    routing: Routing = Routing.MODEL
    resume: bool = False  # a stream broken after its first byte is continued elsewhere
    reason: str = ""  # REFUSED: why


_ADMIN = (
    "is a vLLM admin endpoint that changes one engine's state; behind the router it would "
    "reach one arbitrary node of the fleet, so spotrelay does not forward it. Call the node "
    "directly (its agent's host, port 8000) if you need it."
)
_INTERNAL = (
    "is a vLLM-internal API (disaggregated serving or SageMaker wiring), not a client "
    "endpoint; spotrelay does not forward it."
)


def _post(path: str, stream: StreamKind = StreamKind.NONE, **kw: object) -> Endpoint:
    return Endpoint(path, stream=stream, **kw)  # type: ignore[arg-type]


def _get(path: str) -> Endpoint:
    return Endpoint(path, ("GET",), BodyKind.NONE, routing=Routing.ANY_NODE)


def _refused(path: str, methods: tuple[str, ...], why: str) -> Endpoint:
    return Endpoint(path, methods, BodyKind.NONE, routing=Routing.REFUSED, reason=why)


OPENAI, RESPONSES, ANTHROPIC = StreamKind.OPENAI, StreamKind.RESPONSES, StreamKind.ANTHROPIC

ENDPOINTS: tuple[Endpoint, ...] = (
    # generation
    _post("/v1/chat/completions", OPENAI, resume=True),
    _post("/v1/completions", OPENAI, resume=True),
    _post("/v1/responses", RESPONSES),
    _post("/v1/messages", ANTHROPIC),
    _post("/v1/messages/count_tokens"),
    _post("/v1/chat/completions/render"),
    _post("/v1/completions/render"),
    # pooling models
    _post("/v1/embeddings"),
    _post("/pooling"),
    _post("/classify"),
    _post("/score"),
    _post("/v1/score"),
    _post("/rerank"),
    _post("/v1/rerank"),
    _post("/v2/rerank"),
    # tokenizer
    _post("/tokenize"),
    _post("/detokenize"),
    # speech to text (multipart/form-data; stream=true in the form gives SSE)
    Endpoint("/v1/audio/transcriptions", body=BodyKind.MULTIPART, stream=OPENAI),
    Endpoint("/v1/audio/translations", body=BodyKind.MULTIPART, stream=OPENAI),
    # engine information, from any ready node
    Endpoint("/v1/models", ("GET",), BodyKind.NONE, routing=Routing.LOCAL),
    _get("/version"),
    _get("/health"),
    _get("/load"),
    _get("/tokenizer_info"),
    Endpoint("/ping", ("GET", "POST"), BodyKind.NONE, routing=Routing.ANY_NODE),
    # stored responses (vLLM with VLLM_ENABLE_RESPONSES_API_STORE): on one node, asked in turn
    Endpoint("/v1/responses/<response_id>", ("GET",), BodyKind.NONE, RESPONSES, Routing.STORED),
    Endpoint("/v1/responses/<response_id>/cancel", body=BodyKind.NONE, routing=Routing.STORED),
    # refused: internal, admin
    _refused("/invocations", ("POST",), _INTERNAL),
    _refused("/inference/v1/generate", ("POST",), _INTERNAL),
    _refused("/abort_requests", ("POST",), _INTERNAL),
    *(
        _refused(path, methods, _ADMIN)
        for path, methods in (
            ("/reset_prefix_cache", ("POST",)),
            ("/reset_mm_cache", ("POST",)),
            ("/reset_encoder_cache", ("POST",)),
            ("/sleep", ("POST",)),
            ("/wake_up", ("POST",)),
            ("/is_sleeping", ("GET",)),
            ("/pause", ("POST",)),
            ("/resume", ("POST",)),
            ("/is_paused", ("GET",)),
            ("/collective_rpc", ("POST",)),
            ("/start_profile", ("POST",)),
            ("/stop_profile", ("POST",)),
            ("/v1/load_lora_adapter", ("POST",)),
            ("/v1/unload_lora_adapter", ("POST",)),
            ("/scale_elastic_ep", ("POST",)),
            ("/is_scaling_elastic_ep", ("POST",)),
            ("/update_weights", ("POST",)),
            ("/server_info", ("GET",)),
        )
    ),
)

_RULE_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


def by_rule() -> dict[str, Endpoint]:
    """The table keyed by Flask rule (for registering routes)."""
    return {e.path: e for e in ENDPOINTS}


def display_path(rule: str) -> str:
    """``/v1/responses/<path:rest>`` as docs write it: ``/v1/responses/{rest}``."""
    return _RULE_PARAM.sub(r"{\1}", rule)
