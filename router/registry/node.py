"""One registered engine as a worker sees it, and the states it can be in.

A :class:`Node` carries what its agent reports plus the little only this
worker knows and routing reads on every request (requests open on it, their
exchanges, the rhythm of its streams). It is changed only by the
:class:`~spotrelay.router.registry.state.Registry` applying an operation;
passive-health counters live in :mod:`.outlier`, its connection pool on the
transport side (:mod:`spotrelay.router.transport.pools`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from spotrelay.core.control_api import Ejection, Failures, NodeEntry
from spotrelay.core.protocol import EngineInfo, NodeLoad, NodeState, Risk

from ..stream.hedge import Rhythm
from ..transport.netpolicy import NodeTarget
from .exchange import Exchange


class NodeStatus(StrEnum):
    """The router's view of a node, in order of precedence."""

    READY = "ready"
    DRAINING = "draining"
    EJECTED = "ejected"
    UNHEALTHY = "unhealthy"  # the node says its engine hangs; kept registered


class ModelStatus(StrEnum):
    AVAILABLE = "available"  # at least one routable node serves it
    UNAVAILABLE = "unavailable"  # known (or nothing registered): worth waiting for capacity
    UNKNOWN = "unknown"  # nodes are registered and none ever served it: 404


@dataclass(eq=False)
class Node:
    """One registered engine. Mutated only under the registry's lock."""

    id: str
    target: NodeTarget
    models: frozenset[str]
    reported_state: NodeState
    load: NodeLoad
    labels: dict[str, str]
    registered_at: float
    last_seen: float
    admin_drained: bool = False
    # Set and cleared only by the registry applying Eject/Restore (the outlier detector's
    # verdict, as Envoy's detector sets a host's health flag); the counters are in .outlier.
    ejected: bool = False
    in_flight: int = 0
    removed: bool = False
    engine: EngineInfo = field(default_factory=EngineInfo)
    instance_id: str | None = None
    risk: Risk = Risk.NONE
    exchanges: set[Exchange] = field(default_factory=set)  # open attempts, cut on node loss
    rhythm: Rhythm = field(default_factory=Rhythm)  # recent inter-event gap of its streams

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def draining(self) -> bool:
        return self.admin_drained or self.reported_state is NodeState.DRAINING

    @property
    def unhealthy(self) -> bool:
        return self.reported_state is NodeState.UNHEALTHY

    @property
    def lost(self) -> bool:
        """Nothing open on it can finish: removed, unhealthy or ejected."""
        return self.removed or self.ejected or self.unhealthy

    @property
    def status(self) -> NodeStatus:
        if self.ejected:
            return NodeStatus.EJECTED
        if self.unhealthy:
            return NodeStatus.UNHEALTHY
        if self.draining:
            return NodeStatus.DRAINING
        return NodeStatus.READY

    @property
    def routable(self) -> bool:
        return not self.removed and not self.ejected and not self.draining and not self.unhealthy

    @property
    def queue(self) -> int:
        """Engine-reported work (running + waiting): the balancer's tie breaker."""
        return self.load.running + self.load.waiting

    def entry(self, now: float, failures: Failures, ejection: Ejection) -> NodeEntry:
        """This node in ``GET /nodes`` (the shape is the control API's, in core); the
        passive-health parts come from the outlier detector."""
        return NodeEntry(
            id=self.id,
            url=self.url,
            models=tuple(sorted(self.models)),
            state=str(self.status),
            reported_state=str(self.reported_state),
            admin_drained=self.admin_drained,
            load=self.load,
            labels=dict(self.labels),
            engine=self.engine,
            risk=str(self.risk),
            instance_id=self.instance_id,
            in_flight=self.in_flight,
            failures=failures,
            ejection=ejection,
            last_seen_s_ago=round(now - self.last_seen, 3),
            registered_s_ago=round(now - self.registered_at, 3),
        )
