"""The in-memory node registry: who serves what, in which state, with how much open work.

Agents register and heartbeat with ``PUT /nodes/{id}``; a node silent for
``registry.ttl_s`` is dropped. Besides what agents report (models, ready or
draining, engine load) the registry keeps what only the router knows: the
requests it has open on each node (``in_flight``, the balancer's main input),
consecutive failures, and passive-health ejection (outlier detection: after
``consecutive_failures`` failures a node is ejected for ``base_ejection_s`` times
its number of ejections, capped at ``max_ejection_s``; it comes back once the
ejection time has passed *and* an active ``/health`` probe succeeds).

A node drained through ``POST /nodes/{id}/drain`` stays draining whatever its
heartbeats say, until it is deleted or expires: an operator's drain must not
be undone by the next heartbeat.

This class is one worker's *local view*: routing reads only it, never the
network. With ``registry.backend: memory`` it is the whole registry (one
worker). With ``redis``, :class:`~spotrelay.router.registry.sync.RedisSync`
writes local changes to Redis and applies everyone else's here
(:meth:`Registry.upsert` with ``age_s``, :meth:`Registry.replace_all`);
in-flight counts, failures and ejection stay per worker either way. The class
does no I/O and reads time only from the injected clock. Methods are safe to
call from many threads or greenlets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from spotrelay.core.control_api import Ejection, Failures, NodeEntry, NodeList
from spotrelay.core.protocol import EngineInfo, NodeLoad, NodeReport, NodeState, Risk

from ..stream.hedge import Rhythm
from ..transport.netpolicy import NodeTarget
from .exchange import Exchange

KNOWN_MODELS_CAP = 10_000


class RegistryFull(Exception):
    """A new node would exceed ``registry.max_nodes``; heartbeats of known nodes still pass."""

    def __init__(self, max_nodes: int) -> None:
        super().__init__(f"registry full: {max_nodes} nodes registered (registry.max_nodes)")
        self.max_nodes = max_nodes


class NodeStatus(StrEnum):
    """The router's view of a node, in order of precedence."""

    READY = "ready"
    DRAINING = "draining"
    EJECTED = "ejected"
    UNHEALTHY = "unhealthy"  # the node says its engine hangs; kept registered


#: Events after which nothing still open on the node can finish: its exchanges are cut.
#: A node removed after a completed drain has none open, so every removal qualifies.
NODE_LOST_EVENTS = frozenset({"expired", "deleted", "unhealthy", "ejected", "frozen"})


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
    pool: Any = None  # the upstream connection pool, made by the registry's pool_factory
    admin_drained: bool = False
    in_flight: int = 0
    consecutive_failures: int = 0
    total_failures: int = 0
    ejections: int = 0
    ejected_until: float | None = None  # not ejected when None
    restored_at: float | None = None
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
    def ejected(self) -> bool:
        return self.ejected_until is not None

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

    def entry(self, now: float) -> NodeEntry:
        """This node in ``GET /nodes`` (the shape is the control API's, in core)."""
        remaining = max(0.0, self.ejected_until - now) if self.ejected_until else 0.0
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
            failures=Failures(self.consecutive_failures, self.total_failures),
            ejection=Ejection(self.ejected, self.ejections, round(remaining, 3)),
            last_seen_s_ago=round(now - self.last_seen, 3),
            registered_s_ago=round(now - self.registered_at, 3),
        )


@dataclass(frozen=True)
class EjectionPolicy:
    consecutive_failures: int = 3
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0

    def duration(self, ejections: int) -> float:
        return min(self.max_ejection_s, self.base_ejection_s * max(1, ejections))


class Registry:
    """Nodes by id, with TTL expiry, states, in-flight counts and ejection."""

    def __init__(
        self,
        ttl_s: float,
        ejection: EjectionPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        pool_factory: Callable[[NodeTarget], Any] | None = None,
        max_nodes: int | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_nodes = max_nodes
        self.ejection = ejection or EjectionPolicy()
        self.clock = clock
        self.pool_factory = pool_factory
        self._nodes: dict[str, Node] = {}
        self._by_model: dict[str, tuple[Node, ...]] = {}
        self._known_models: dict[str, float] = {}
        # Engine capabilities some node serving each known model has reported:
        # a stream continuation that needs one waits for a replacement node only
        # where the fleet has had such a node (bounded with _known_models).
        self._model_caps: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.listeners: list[Callable[[str, Node], None]] = []  # (event, node)
        # Set while the shared view cannot be refreshed (Redis down): keep serving
        # the last view instead of expiring nodes whose heartbeats went elsewhere.
        self.hold_expiry = False

    # -- control plane ---------------------------------------------------------------

    def upsert(
        self,
        node_id: str,
        report: NodeReport,
        target: NodeTarget,
        *,
        age_s: float = 0.0,
        drained: bool = False,
    ) -> tuple[Node, bool]:
        """Register or heartbeat; returns the node and whether it is new.

        ``age_s`` and ``drained`` come from the shared view: how long ago the
        heartbeat arrived (at whichever worker) and whether an operator drained it.
        Raises :class:`RegistryFull` for a new node beyond ``max_nodes``.
        """
        now = self.clock() - max(0.0, age_s)
        events: list[tuple[str, Node]] = []
        old_pool = None
        with self._lock:
            node = self._nodes.get(node_id)
            created = node is None
            if node is None:
                if self.max_nodes is not None and len(self._nodes) >= self.max_nodes:
                    raise RegistryFull(self.max_nodes)
                node = Node(
                    id=node_id,
                    target=target,
                    models=frozenset(report.models),
                    reported_state=report.state,
                    load=report.load,
                    labels=dict(report.labels),
                    registered_at=now,
                    last_seen=now,
                    pool=self.pool_factory(target) if self.pool_factory else None,
                    engine=report.engine,
                    instance_id=report.instance_id,
                    risk=report.risk,
                    admin_drained=drained,
                )
                self._nodes[node_id] = node
                events.append(("registered", node))
            else:
                if node.target.url != target.url or node.target.address != target.address:
                    old_pool = node.pool
                    node.target = target
                    node.pool = self.pool_factory(target) if self.pool_factory else None
                    events.append(("moved", node))
                if node.reported_state is not report.state:
                    unhealthy = report.state is NodeState.UNHEALTHY
                    events.append(("unhealthy" if unhealthy else "state", node))
                node.models = frozenset(report.models)
                node.reported_state = report.state
                node.load = report.load
                node.labels = dict(report.labels)
                node.engine = report.engine
                node.instance_id = report.instance_id
                node.risk = report.risk
                node.last_seen = max(node.last_seen, now)
                if drained and not node.admin_drained:
                    node.admin_drained = True
                    events.append(("drained", node))
            for model in node.models:
                self._known_models[model] = now
                caps = self._model_caps.get(model, frozenset())
                if not node.engine.capabilities <= caps:
                    self._model_caps[model] = caps | node.engine.capabilities
            if len(self._known_models) > KNOWN_MODELS_CAP:
                oldest = sorted(self._known_models, key=self._known_models.__getitem__)
                for model in oldest[: len(self._known_models) - KNOWN_MODELS_CAP]:
                    del self._known_models[model]
                    self._model_caps.pop(model, None)
            self._reindex()
            if node.routable:
                self._changed.notify_all()
        _close_pool(old_pool)
        self._emit(events)
        return node, created

    def drain(self, node_id: str) -> int | None:
        """Stop routing new requests to the node; its open requests, or None if unknown."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return None
            changed = not node.admin_drained
            node.admin_drained = True
            in_flight = node.in_flight
        if changed:
            self._emit([("drained", node)])
        return in_flight

    def drain_instance(self, instance_id: str) -> list[tuple[Node, bool]]:
        """Drain every node on this EC2 instance; each with whether it was draining already.

        Off-node interruption events (EventBridge → SQS → controller) know the
        instance, not the node id. A node already draining, by its agent or an
        earlier call, is reported but not drained again (no second event).
        """
        with self._lock:
            matches = [
                (node, node.draining)
                for node in self._nodes.values()
                if node.instance_id == instance_id
            ]
            for node, _ in matches:
                node.admin_drained = True
        self._emit([("drained", node) for node, already in matches if not already])
        return matches

    def remove(self, node_id: str, reason: str = "deleted") -> Node | None:
        with self._lock:
            node = self._nodes.pop(node_id, None)
            if node is None:
                return None
            node.removed = True
            self._reindex()
        _close_pool(node.pool)
        self._emit([(reason, node)])
        return node

    def evict_silent(self, silent_s: float) -> Node | None:
        """Forget the node heard from longest ago if it has been silent over ``silent_s``.

        A registry full of nodes that stopped heartbeating (or of junk read
        from a shared view) must make room for a node that is registering now.
        """
        with self._lock:
            horizon = self.clock() - silent_s
            stale = [n for n in self._nodes.values() if n.last_seen < horizon]
            victim = min(stale, key=lambda n: n.last_seen, default=None)
        if victim is None:
            return None
        return self.remove(victim.id, "expired")

    def replace_all(self, nodes: list[tuple[str, NodeReport, NodeTarget, float, bool]]) -> None:
        """Make the view exactly ``nodes`` (id, report, target, age_s, drained).

        Used when the shared view is rebuilt; nodes kept keep their per-worker
        state (in-flight counts, ejection, connection pool). A node missing from
        the rebuilt view is *forgotten*, not lost: after a Redis restart the view
        can lack a node that serves fine, so what is open on it goes on (no cut),
        and its next heartbeat brings it back. A node that really died expires
        on the worker that hears from it, and that expiry reaches every worker.
        """
        keep = set()
        for node_id, report, target, age_s, drained in nodes:
            try:
                self.upsert(node_id, report, target, age_s=age_s, drained=drained)
            except RegistryFull:
                continue  # this worker's cap; the node stays known to the others
            keep.add(node_id)
        for node_id in [n for n in list(self._nodes) if n not in keep]:
            self.remove(node_id, "forgotten")

    def expire(self) -> list[Node]:
        """Drop nodes that missed heartbeats for ``ttl_s``; returns them."""
        if self.hold_expiry:
            return []
        now = self.clock()
        with self._lock:
            stale = [n for n in self._nodes.values() if now - n.last_seen > self.ttl_s]
            for node in stale:
                del self._nodes[node.id]
                node.removed = True
            if stale:
                self._reindex()
        for node in stale:
            _close_pool(node.pool)
        self._emit([("expired", n) for n in stale])
        return stale

    # -- reads ------------------------------------------------------------------------

    def get(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def nodes(self) -> list[Node]:
        with self._lock:
            return list(self._nodes.values())

    def snapshot(self) -> NodeList:
        now = self.clock()
        with self._lock:
            nodes = sorted(self._nodes.values(), key=lambda n: n.id)
            return NodeList(tuple(n.entry(now) for n in nodes))

    def candidates(self, model: str) -> list[Node]:
        """Routable nodes serving ``model`` that have not gone silent."""
        horizon = self._horizon()
        return [n for n in self._by_model.get(model, ()) if n.routable and n.last_seen >= horizon]

    def model_status(self, model: str) -> ModelStatus:
        if self.candidates(model):
            return ModelStatus.AVAILABLE
        if model in self._known_models or not self._nodes:
            return ModelStatus.UNAVAILABLE
        return ModelStatus.UNKNOWN

    def has_had_capabilities(self, model: str, capabilities: frozenset[str]) -> bool:
        """Has some node serving ``model`` reported all of ``capabilities`` since start?"""
        return capabilities <= self._model_caps.get(model, frozenset())

    def has_served(self, model: str) -> bool:
        """Has any node registered with ``model`` since start (the bounded known-model set)?"""
        return model in self._known_models

    def known_models(self) -> list[str]:
        """Every model some node has served since start (bounded): gauges keep a 0 for each."""
        return sorted(self._known_models)

    def ready_models(self) -> list[str]:
        """Models served by at least one routable node."""
        return sorted(m for m in self._by_model if self.candidates(m))

    def counts_by_status(self) -> dict[str, int]:
        counts = {str(s): 0 for s in NodeStatus}
        with self._lock:
            for node in self._nodes.values():
                counts[str(node.status)] += 1
        return counts

    def any_ready(self) -> bool:
        horizon = self._horizon()
        return any(n.routable and n.last_seen >= horizon for n in self._nodes.values())

    def wait_for_change(self, timeout: float) -> None:
        """Block up to ``timeout`` or until a node becomes routable."""
        if timeout <= 0:
            return
        with self._changed:
            self._changed.wait(timeout)

    # -- data-plane accounting ---------------------------------------------------------

    def acquire(self, node: Node) -> Exchange:
        """Count a request open on ``node``; its exchange is cut when the node is lost
        (at once when it is lost already: picked just before it left)."""
        exchange = Exchange(node.id)
        with self._lock:
            node.in_flight += 1
            node.exchanges.add(exchange)
            lost = node.lost
        if lost:
            exchange.reason = f"node {node.id} is {'gone' if node.removed else node.status}"
        return exchange

    def release(self, node: Node, exchange: Exchange | None = None) -> None:
        with self._lock:
            node.in_flight -= 1
            if exchange is not None:
                node.exchanges.discard(exchange)

    def open_exchanges(self, node: Node) -> list[Exchange]:
        """The exchanges open on ``node`` now (to cut them when it is lost)."""
        with self._lock:
            return list(node.exchanges)

    def eject(self, node: Node, event: str = "ejected") -> bool:
        """Eject ``node`` now (no new work; probes restore it), as ``record_failure`` does
        after its failures; ``event`` names why. False when it was ejected already."""
        now = self.clock()
        policy = self.ejection
        with self._lock:
            if node.ejected or node.removed:
                return False
            if node.restored_at is not None and now - node.restored_at >= policy.max_ejection_s:
                node.ejections = 0
            node.ejections += 1
            node.ejected_until = now + policy.duration(node.ejections)
        self._emit([(event, node)])
        return True

    def record_success(self, node: Node) -> None:
        if node.consecutive_failures:
            with self._lock:
                node.consecutive_failures = 0

    def record_failure(self, node: Node) -> bool:
        """Count a failure; returns True when this one ejected the node."""
        with self._lock:
            node.consecutive_failures += 1
            node.total_failures += 1
            if node.ejected or node.consecutive_failures < self.ejection.consecutive_failures:
                return False
        # Ejections decay: a node healthy for max_ejection_s starts from scratch (eject).
        return self.eject(node)

    def due_for_probe(self) -> list[Node]:
        """Ejected nodes whose ejection time is over: probe them, then restore."""
        now = self.clock()
        with self._lock:
            return [
                n
                for n in self._nodes.values()
                if n.ejected_until is not None and n.ejected_until <= now
            ]

    def restore(self, node: Node) -> bool:
        with self._lock:
            if node.ejected_until is None or node.removed:
                return False
            node.ejected_until = None
            node.consecutive_failures = 0
            node.restored_at = self.clock()
            self._changed.notify_all()
        self._emit([("restored", node)])
        return True

    # -- internals ------------------------------------------------------------------

    def _horizon(self) -> float:
        """Nodes last seen before this are silent (nothing is while expiry is held)."""
        return float("-inf") if self.hold_expiry else self.clock() - self.ttl_s

    def _reindex(self) -> None:
        by_model: dict[str, list[Node]] = {}
        for node in self._nodes.values():
            for model in node.models:
                by_model.setdefault(model, []).append(node)
        self._by_model = {m: tuple(ns) for m, ns in by_model.items()}

    def _emit(self, events: list[tuple[str, Node]]) -> None:
        for event, node in events:
            for listener in self.listeners:
                listener(event, node)


def _close_pool(pool: Any) -> None:
    if pool is not None and hasattr(pool, "close"):
        pool.close()
