"""Every change to node state, as a typed operation, and what applying one tells listeners.

The control plane, the TTL sweep, passive health, the frozen-node rule and
the shared registry's follower all change nodes the same way: they build an
operation and hand it to :meth:`Registry.apply
<spotrelay.router.registry.state.Registry.apply>`. The registry applies it
under its lock, tells its listeners what changed (:class:`NodeEvent`: the
node-loss cuts, metrics, logs, connection pools) and hands it to its sync
backend (:mod:`.backend`), which shares the ops other workers must see. One
path, so nothing changes a node without its listeners and the other workers
hearing of it, and nothing is written back to where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from spotrelay.core.protocol import NodeReport

from ..transport.netpolicy import NodeTarget
from .node import Node


class NodeEvent(StrEnum):
    """What applying an op did to one node (the label of ``node_events_total``)."""

    REGISTERED = "registered"
    MOVED = "moved"  # its URL or vetted address changed
    STATE = "state"  # its reported state changed (not to unhealthy)
    UNHEALTHY = "unhealthy"
    DRAINED = "drained"
    DELETED = "deleted"
    EXPIRED = "expired"
    FORGOTTEN = "forgotten"  # missing from a rebuilt shared view: dropped, not lost
    EJECTED = "ejected"
    FROZEN = "frozen"  # ejected because every stream open on it stalled
    RESTORED = "restored"


#: Events after which nothing still open on the node can finish: its exchanges are cut.
#: A node removed after a completed drain has none open, so every removal qualifies.
NODE_LOST_EVENTS = frozenset(
    {NodeEvent.EXPIRED, NodeEvent.DELETED, NodeEvent.UNHEALTHY, NodeEvent.EJECTED, NodeEvent.FROZEN}
)


@dataclass(frozen=True)
class Upsert:
    """A registration or heartbeat at a vetted target.

    ``age_s`` and ``drained`` come from the shared view: how long ago the
    heartbeat arrived (at whichever worker) and whether an operator drained it.
    """

    node_id: str
    report: NodeReport
    target: NodeTarget
    age_s: float = 0.0
    drained: bool = False


@dataclass(frozen=True)
class Drain:
    """Stop routing new requests to the node; sticky until it is deleted or expires."""

    node_id: str


@dataclass(frozen=True)
class DrainInstance:
    """Drain every node on an EC2 instance (off-node interruption events know only it)."""

    instance_id: str


@dataclass(frozen=True)
class Delete:
    node_id: str


@dataclass(frozen=True)
class Expire:
    """Drop a node as silent for ``registry.ttl_s`` (found by the sweep, or by another worker)."""

    node_id: str


@dataclass(frozen=True)
class Rebuild:
    """Make the view exactly ``nodes`` (the shared view's snapshot, freshest first)."""

    nodes: tuple[Upsert, ...]


@dataclass(frozen=True)
class Eject:
    """Take the node out of rotation until a probe restores it (this worker only)."""

    node: Node
    event: NodeEvent = NodeEvent.EJECTED  # or FROZEN: why


@dataclass(frozen=True)
class Restore:
    """An ejected node answered its probe (this worker only)."""

    node: Node


Op = Upsert | Drain | DrainInstance | Delete | Expire | Rebuild | Eject | Restore


@dataclass
class Outcome:
    """What applying one op did.

    ``node`` is the node it applied to (None: not known here), ``created``
    whether an upsert registered it, ``matched`` the nodes an instance drain
    found (each with whether it was draining already), ``evicted`` a silent
    node an upsert displaced, ``events`` what the listeners heard.
    """

    node: Node | None = None
    created: bool = False
    matched: list[tuple[Node, bool]] = field(default_factory=list)
    evicted: Node | None = None
    events: list[tuple[NodeEvent, Node]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.events)
