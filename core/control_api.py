"""The routers' control plane, defined once: its paths, its auth header, its answers.

Five clients (the agent, the capacity controller, ``spotrelay status``, the
simulator's fleet and its router chaos) once wrote these paths and guessed
these bodies by hand, two of them unsure whether ``GET /nodes`` answers a
list or an object. Now the router registers its routes with the paths here
and builds its answers with the shapes here, and every client goes through
:class:`~.control_client.ControlClient`, which parses them with the same
shapes; a renamed field changes in one place. The body of
``PUT /nodes/{id}`` is the node protocol's (:mod:`.protocol`).

Standard library only: the controller's Lambda package ships this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self
from urllib.parse import quote

from .protocol import EngineInfo, NodeLoad

# -- paths ---------------------------------------------------------------------------------

NODES = "/nodes"
INSTANCES = "/instances"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"

# The router's route rules (Flask syntax) for the paths with an id in them.
NODE_RULE = NODES + "/<node_id>"
NODE_DRAIN_RULE = NODE_RULE + "/drain"
INSTANCE_DRAIN_RULE = INSTANCES + "/<instance_id>/drain"

# Which listener serves what (router/views/listeners.py): the ops paths answer on both; the
# control listener serves the control plane and /metrics and nothing else.
OPS_PATHS = frozenset({HEALTHZ, READYZ})
CONTROL_PATHS = frozenset({NODES, METRICS})
CONTROL_PREFIXES = (NODES + "/", INSTANCES + "/")


def node_path(node_id: str) -> str:
    """``PUT``/``DELETE`` of one node; the id is quoted, since it is a path segment."""
    return f"{NODES}/{quote(node_id, safe='')}"


def node_drain_path(node_id: str) -> str:
    return node_path(node_id) + "/drain"


def instance_drain_path(instance_id: str) -> str:
    return f"{INSTANCES}/{quote(instance_id, safe='')}/drain"


# -- auth and headers ----------------------------------------------------------------------

AUTH_SCHEME = "Bearer"
UNAUTHORIZED = "missing or invalid node token"
# Who answered GET /nodes (any worker of any router may, behind a load balancer),
# and whether its view is the fleet's shared one: memory | redis | redis-down.
ROUTER_HEADER = "X-Spotrelay-Router"
REGISTRY_HEADER = "X-Spotrelay-Registry"


def auth_header(token: str) -> dict[str, str]:
    """The node token as every control-plane call carries it."""
    return {"Authorization": f"{AUTH_SCHEME} {token}"}


def error_doc(message: str) -> dict[str, str]:
    """A control-plane error body (the data plane answers OpenAI's shape instead)."""
    return {"error": message}


def error_message(doc: Any) -> str:
    """The message of an error body, of either plane's shape; ``""`` for anything else."""
    if not isinstance(doc, dict):
        return ""
    err = doc.get("error")
    if isinstance(err, dict):
        return str(err.get("message", ""))[:200]
    return str(err or "")[:200]


# -- answer shapes -------------------------------------------------------------------------


class ShapeError(ValueError):
    """An answer that does not have the shape this module defines; names the field."""


@dataclass(frozen=True)
class NodeAck:
    """``PUT /nodes/{id}``: the router's view of the node it just heard.

    ``state`` is the router's (``ready``, ``draining``, ``ejected``,
    ``unhealthy``); ``registered`` is true for a node new to it.
    """

    id: str
    url: str
    state: str
    registered: bool
    in_flight: int
    ttl_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state,
            "registered": self.registered,
            "in_flight": self.in_flight,
            "ttl_s": self.ttl_s,
        }

    @classmethod
    def from_json(cls, doc: Any) -> NodeAck:
        d = _object(doc, "node acknowledgement")
        return cls(
            id=_str(d, "id", None),
            url=_str(d, "url", ""),
            state=_str(d, "state", ""),
            registered=_bool(d, "registered", False),
            in_flight=_int(d, "in_flight", 0),
            ttl_s=_float(d, "ttl_s", 0.0),
        )


@dataclass(frozen=True)
class Failures:
    consecutive: int = 0
    total: int = 0


@dataclass(frozen=True)
class Ejection:
    ejected: bool = False
    count: int = 0
    remaining_s: float = 0.0


@dataclass(frozen=True)
class NodeEntry:
    """One node in ``GET /nodes``, as the answering worker sees it.

    ``in_flight``, ``failures`` and ``ejection`` are that worker's own; the
    rest is what the node reported, or (``state``, ``admin_drained``) what
    the routers decided.
    """

    id: str
    state: str  # the router's view: ready | draining | ejected | unhealthy
    url: str = ""
    models: tuple[str, ...] = ()
    reported_state: str = ""  # what the agent said: ready | draining | unhealthy
    admin_drained: bool = False  # a drain call, which a heartbeat does not undo
    load: NodeLoad = field(default_factory=NodeLoad)
    labels: Mapping[str, str] = field(default_factory=dict)
    engine: EngineInfo = field(default_factory=EngineInfo)
    risk: str = "none"
    instance_id: str | None = None
    in_flight: int = 0
    failures: Failures = field(default_factory=Failures)
    ejection: Ejection = field(default_factory=Ejection)
    last_seen_s_ago: float = 0.0
    registered_s_ago: float = 0.0

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "models": list(self.models),
            "state": self.state,
            "reported_state": self.reported_state,
            "admin_drained": self.admin_drained,
            "load": {
                "running": self.load.running,
                "waiting": self.load.waiting,
                "kv_cache_usage": self.load.kv_cache_usage,
            },
            "labels": dict(self.labels),
            "engine": self.engine.to_json(),
            "risk": self.risk,
            "instance_id": self.instance_id,
            "in_flight": self.in_flight,
            "failures": {"consecutive": self.failures.consecutive, "total": self.failures.total},
            "ejection": {
                "ejected": self.ejection.ejected,
                "count": self.ejection.count,
                "remaining_s": self.ejection.remaining_s,
            },
            "last_seen_s_ago": self.last_seen_s_ago,
            "registered_s_ago": self.registered_s_ago,
        }

    @classmethod
    def from_json(cls, doc: Any) -> NodeEntry:
        """Fields a router of another version leaves out take their defaults."""
        d = _object(doc, "node")
        load, failures, ejection = _sub(d, "load"), _sub(d, "failures"), _sub(d, "ejection")
        engine = _sub(d, "engine")
        labels = _sub(d, "labels")
        instance_id = d.get("instance_id")
        if instance_id is not None and not isinstance(instance_id, str):
            raise ShapeError("'instance_id' must be a string or null")
        return cls(
            id=_str(d, "id", None),
            state=_str(d, "state", None),
            url=_str(d, "url", ""),
            models=_strings(d, "models"),
            reported_state=_str(d, "reported_state", ""),
            admin_drained=_bool(d, "admin_drained", False),
            load=NodeLoad(
                running=_int(load, "running", 0),
                waiting=_int(load, "waiting", 0),
                kv_cache_usage=_float(load, "kv_cache_usage", 0.0),
            ),
            labels={str(k): str(v) for k, v in labels.items()},
            engine=EngineInfo(
                kind=_str(engine, "kind", "unknown"),
                version=_str(engine, "version", ""),
                capabilities=frozenset(_strings(engine, "capabilities")),
            ),
            risk=_str(d, "risk", "none"),
            instance_id=instance_id,
            in_flight=_int(d, "in_flight", 0),
            failures=Failures(_int(failures, "consecutive", 0), _int(failures, "total", 0)),
            ejection=Ejection(
                _bool(ejection, "ejected", False),
                _int(ejection, "count", 0),
                _float(ejection, "remaining_s", 0.0),
            ),
            last_seen_s_ago=_float(d, "last_seen_s_ago", 0.0),
            registered_s_ago=_float(d, "registered_s_ago", 0.0),
        )


@dataclass(frozen=True)
class NodeList:
    """``GET /nodes``: a bare JSON list of :class:`NodeEntry`, sorted by id. No envelope."""

    nodes: tuple[NodeEntry, ...] = ()

    def __iter__(self) -> Iterator[NodeEntry]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def ready_count(self) -> int:
        return sum(1 for n in self.nodes if n.ready)

    def to_json(self) -> list[dict[str, Any]]:
        return [n.to_json() for n in self.nodes]

    @classmethod
    def from_json(cls, doc: Any) -> NodeList:
        if not isinstance(doc, list):
            raise ShapeError(f"GET {NODES} must answer a JSON list, not {type(doc).__name__}")
        return cls(tuple(NodeEntry.from_json(n) for n in doc))


@dataclass(frozen=True)
class _NodeCallAnswer:
    """The answer of a call on one node: its id, a fixed field, and what was open on it."""

    FIXED: ClassVar[dict[str, Any]] = {}

    id: str
    in_flight: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.FIXED, "in_flight": self.in_flight}

    @classmethod
    def from_json(cls, doc: Any) -> Self:
        d = _object(doc, cls.__name__)
        return cls(id=_str(d, "id", ""), in_flight=_int(d, "in_flight", 0))


@dataclass(frozen=True)
class NodeDrain(_NodeCallAnswer):
    """``POST /nodes/{id}/drain``: what this router still has open on the node."""

    FIXED: ClassVar[dict[str, Any]] = {"state": "draining"}


@dataclass(frozen=True)
class NodeDeleted(_NodeCallAnswer):
    """``DELETE /nodes/{id}``: the requests that were open on it (cut and moved now)."""

    FIXED: ClassVar[dict[str, Any]] = {"deleted": True}


@dataclass(frozen=True)
class DrainedNode:
    """One node of an instance drain; ``already_draining``: it was not drained twice."""

    id: str
    already_draining: bool = False
    in_flight: int = 0


@dataclass(frozen=True)
class InstanceDrain:
    """``POST /instances/{id}/drain``: every node whose heartbeats carry the instance id."""

    instance_id: str
    nodes: tuple[DrainedNode, ...] = ()

    def counts(self) -> tuple[int, int]:
        """(drained by this call, draining already)."""
        already = sum(1 for n in self.nodes if n.already_draining)
        return len(self.nodes) - already, already

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "nodes": [
                {"id": n.id, "already_draining": n.already_draining, "in_flight": n.in_flight}
                for n in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, doc: Any) -> InstanceDrain:
        d = _object(doc, "instance drain")
        raw = d.get("nodes", [])
        if not isinstance(raw, list):
            raise ShapeError("'nodes' must be a list")
        nodes = []
        for entry in raw:
            n = _object(entry, "drained node")
            nodes.append(
                DrainedNode(
                    _str(n, "id", ""), _bool(n, "already_draining", False), _int(n, "in_flight", 0)
                )
            )
        return cls(instance_id=_str(d, "instance_id", ""), nodes=tuple(nodes))


@dataclass(frozen=True)
class Health:
    """``GET /healthz``: the process serves (liveness)."""

    status: str = "ok"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status}

    @classmethod
    def from_json(cls, doc: Any) -> Health:
        return cls(_str(_object(doc, "health"), "status", ""))


@dataclass(frozen=True)
class Readiness:
    """``GET /readyz`` (200 when ``ready``, else 503): node counts by the router's state."""

    ready: bool
    nodes: Mapping[str, int] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return 200 if self.ready else 503

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "nodes": dict(self.nodes)}

    @classmethod
    def from_json(cls, doc: Any) -> Readiness:
        d = _object(doc, "readiness")
        counts = _sub(d, "nodes")
        return cls(_bool(d, "ready", False), {str(k): _int(counts, k, 0) for k in counts})


# -- typed reads of decoded JSON -------------------------------------------------------------


def _object(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ShapeError(f"a {what} must be a JSON object, not {type(doc).__name__}")
    return doc


def _sub(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    return _object(value, f"'{key}'")


def _str(doc: dict[str, Any], key: str, default: str | None) -> str:
    """``default`` None: the field is required."""
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise ShapeError(f"'{key}' must be a string" + (" (required)" if default is None else ""))
    return value


def _bool(doc: dict[str, Any], key: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise ShapeError(f"'{key}' must be true or false")
    return value


def _int(doc: dict[str, Any], key: str, default: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapeError(f"'{key}' must be an integer")
    return value


def _float(doc: dict[str, Any], key: str, default: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ShapeError(f"'{key}' must be a number")
    return float(value)


def _strings(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ShapeError(f"'{key}' must be a list of strings")
    return tuple(value)
