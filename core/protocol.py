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

NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class NodeState(StrEnum):
    """What a node tells the router about itself."""

    READY = "ready"
    DRAINING = "draining"


@dataclass(frozen=True)
class NodeLoad:
    """Engine load as vLLM reports it on ``/metrics``."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


@dataclass(frozen=True)
class NodeReport:
    """A registration or heartbeat body."""

    url: str
    models: tuple[str, ...]
    state: NodeState = NodeState.READY
    load: NodeLoad = field(default_factory=NodeLoad)
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["models"] = list(self.models)
        doc["state"] = str(self.state)
        return doc


class ProtocolError(ValueError):
    """A body that does not follow the node protocol; the message names the field."""


def valid_node_id(node_id: str) -> bool:
    """Node ids are path segments and metric labels: keep them tame."""
    return bool(NODE_ID_RE.match(node_id))


def parse_report(body: Any) -> NodeReport:
    """Validate a decoded JSON body into a :class:`NodeReport`."""
    if not isinstance(body, dict):
        raise ProtocolError("body must be a JSON object")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise ProtocolError("'url' must be a non-empty string")
    models = body.get("models")
    if (
        not isinstance(models, list)
        or not models
        or not all(isinstance(m, str) and m for m in models)
    ):
        raise ProtocolError("'models' must be a non-empty list of strings")
    try:
        state = NodeState(body.get("state", "ready"))
    except ValueError:
        raise ProtocolError("'state' must be 'ready' or 'draining'") from None
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
    labels = body.get("labels") or {}
    if not isinstance(labels, dict):
        raise ProtocolError("'labels' must be an object")
    return NodeReport(
        url=url,
        models=tuple(models),
        state=state,
        load=load,
        labels={str(k): str(v) for k, v in labels.items()},
    )
