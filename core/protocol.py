"""The agent → router node protocol (``PUT /nodes/{id}``), one definition for both sides.

The router validates what agents send with :func:`parse_report`; the agent
builds its heartbeat with :class:`NodeReport` and :meth:`NodeReport.to_json`,
so the two cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
INSTANCE_ID_RE = re.compile(r"i-[0-9a-f]{8,17}")
TOKEN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

# Capabilities an engine may advertise. Routers use them to decide what a
# failover may do on that node; an unknown capability is kept but ignored.
CAP_CONTINUE_FINAL_MESSAGE = "continue_final_message"  # chat resume (vLLM extension)
CAP_ECHO = "echo"  # completions accept ``echo``
MAX_CAPABILITIES = 32

# Registration limits. Model names and labels become metric label values, log
# fields and JSON in every answer of ``GET /nodes``; a node-token holder (or a
# Redis entry) must not be able to make them kilobytes long or forge lines.
MAX_MODELS = 64
MAX_MODEL_CHARS = 256
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 256
MAX_URL_CHARS = 2048
LABEL_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,63}")


class NodeState(StrEnum):
    """What a node tells the router about itself.

    ``unhealthy``: the engine is up but not making progress (a hung GPU); the
    router routes nothing to it and moves its open requests, but keeps it
    registered so that a later ``ready`` brings it back.
    """

    READY = "ready"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"


class Risk(StrEnum):
    """How likely the node is to be reclaimed soon, as its agent sees it.

    ``elevated``: EC2 sent a rebalance recommendation (often 10-20 minutes
    before an interruption notice, sometimes never followed by one). Routers
    keep new long requests off such a node and still send it short ones.
    """

    NONE = "none"
    ELEVATED = "elevated"


@dataclass(frozen=True)
class NodeLoad:
    """Engine load as vLLM reports it on ``/metrics``."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True)
class EngineInfo:
    """What the agent detected about the engine: its kind, version and capabilities.

    ``kind`` is ``vllm``, ``sglang``, ``tgi``, ``llama.cpp``, ``openai`` (any
    other OpenAI-compatible server) or ``unknown``. An agent that reports no
    engine block is treated as ``unknown`` with no capabilities, so an old agent
    never unlocks a failover behaviour its engine may not support.
    """

    kind: str = "unknown"
    version: str = ""
    capabilities: frozenset[str] = frozenset()

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "capabilities": sorted(self.capabilities),
        }


@dataclass(frozen=True)
class NodeReport:
    """A registration or heartbeat body."""

    url: str
    models: tuple[str, ...]
    state: NodeState = NodeState.READY
    load: NodeLoad = field(default_factory=NodeLoad)
    labels: dict[str, str] = field(default_factory=dict)
    engine: EngineInfo = field(default_factory=EngineInfo)
    instance_id: str | None = None  # the EC2 instance id, so off-node events can find the node
    risk: Risk = Risk.NONE

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["models"] = list(self.models)
        doc["state"] = str(self.state)
        doc["risk"] = str(self.risk)
        doc["engine"] = self.engine.to_json()
        if self.instance_id is None:
            del doc["instance_id"]
        return doc


class ProtocolError(ValueError):
    """A body that does not follow the node protocol; the message names the field."""


def valid_node_id(node_id: str) -> bool:
    """Node ids are path segments and metric labels: keep them tame."""
    return bool(NODE_ID_RE.fullmatch(node_id))


def valid_instance_id(value: str) -> bool:
    return bool(INSTANCE_ID_RE.fullmatch(value))


def parse_report(body: Any) -> NodeReport:
    """Validate a decoded JSON body into a :class:`NodeReport`."""
    if not isinstance(body, dict):
        raise ProtocolError("body must be a JSON object")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise ProtocolError("'url' must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise ProtocolError(f"'url' is longer than {MAX_URL_CHARS} characters")
    models = _parse_models(body.get("models"))
    try:
        state = NodeState(body.get("state", "ready"))
    except ValueError:
        raise ProtocolError(
            f"'state' must be one of {', '.join(repr(str(s)) for s in NodeState)}"
        ) from None
    raw_load = body.get("load") or {}
    if not isinstance(raw_load, dict):
        raise ProtocolError("'load' must be an object")
    try:
        load = NodeLoad(
            running=int(raw_load.get("running", 0)),
            waiting=int(raw_load.get("waiting", 0)),
            kv_cache_usage=float(raw_load.get("kv_cache_usage", 0.0)),
        )
    except (TypeError, ValueError):
        raise ProtocolError("'load' fields must be numbers") from None
    labels = parse_labels(body.get("labels") or {})
    instance_id = body.get("instance_id")
    if instance_id is not None and (
        not isinstance(instance_id, str) or not valid_instance_id(instance_id)
    ):
        raise ProtocolError("'instance_id' must be an EC2 instance id like i-0123456789abcdef0")
    try:
        risk = Risk(body.get("risk", "none"))
    except ValueError:
        raise ProtocolError("'risk' must be 'none' or 'elevated'") from None
    return NodeReport(
        url=url,
        models=models,
        state=state,
        load=load,
        labels=labels,
        engine=_parse_engine(body.get("engine")),
        instance_id=instance_id,
        risk=risk,
    )


def valid_model_name(name: Any) -> bool:
    """1-256 printable characters, no whitespace: a metric label, a log field, a JSON key."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_MODEL_CHARS
        and name.isprintable()
        and not any(c.isspace() for c in name)
    )


def _parse_models(models: Any) -> tuple[str, ...]:
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ProtocolError("'models' must be a non-empty list of strings")
    if len(models) > MAX_MODELS:
        raise ProtocolError(f"'models' lists {len(models)} models; at most {MAX_MODELS}")
    for m in models:
        if not valid_model_name(m):
            raise ProtocolError(
                f"'models' entry {_preview(m)} must be 1-{MAX_MODEL_CHARS} printable "
                "characters without whitespace"
            )
    return tuple(models)


def parse_labels(labels: Any) -> dict[str, str]:
    """Label keys like Prometheus/Kubernetes names; values short printable scalars."""
    if not isinstance(labels, dict):
        raise ProtocolError("'labels' must be an object")
    if len(labels) > MAX_LABELS:
        raise ProtocolError(f"'labels' has {len(labels)} keys; at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise ProtocolError(
                f"label key {_preview(key)} must be 1-64 characters of letters, digits "
                "and _.:/- starting with a letter or _"
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ProtocolError(f"label {key!r} must be a string")
        text = str(value)
        if len(text) > MAX_LABEL_VALUE_CHARS or not text.isprintable():
            raise ProtocolError(
                f"label {key!r} must be at most {MAX_LABEL_VALUE_CHARS} printable characters"
            )
        out[key] = text
    return out


def _preview(value: Any) -> str:
    """A bad value in an error message: clipped and escaped, never the 60 KB original."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_engine(raw: Any) -> EngineInfo:
    if raw is None:
        return EngineInfo()
    if not isinstance(raw, dict):
        raise ProtocolError("'engine' must be an object")
    kind = raw.get("kind", "unknown")
    version = raw.get("version", "")
    caps = raw.get("capabilities", [])
    if not isinstance(kind, str) or not TOKEN_RE.fullmatch(kind):
        raise ProtocolError("'engine.kind' must be a short name like 'vllm'")
    if not isinstance(version, str) or len(version) > 64 or not version.isprintable():
        raise ProtocolError("'engine.version' must be a printable string of at most 64 characters")
    if (
        not isinstance(caps, list)
        or len(caps) > MAX_CAPABILITIES
        or not all(isinstance(c, str) and TOKEN_RE.fullmatch(c) for c in caps)
    ):
        raise ProtocolError(
            f"'engine.capabilities' must be a list of at most {MAX_CAPABILITIES} short names"
        )
    return EngineInfo(kind=kind, version=version, capabilities=frozenset(caps))
