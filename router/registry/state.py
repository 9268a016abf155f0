"""The in-memory node registry: who serves what, in which state, with how much open work.

Agents register and heartbeat with ``PUT /nodes/{id}``; a node silent for
``registry.ttl_s`` is dropped. Besides what agents report (models, ready or
draining, engine load) the registry keeps what only the router knows: the
requests it has open on each node (``in_flight``, the balancer's main input)
and whether passive health ejected it (the counting is :mod:`.outlier`'s).

Node state changes only through :meth:`Registry.apply`, one typed operation
at a time (:mod:`.ops`): applied under the lock, then told to the listeners
(node-loss cuts, metrics, logs, connection pools) and handed to the sync
backend (:mod:`.backend`), unless it came from there. A node drained through
``POST /nodes/{id}/drain`` stays draining whatever its heartbeats say, until
it is deleted or expires: an operator's drain must not be undone by the next
heartbeat.

This class is one worker's *local view*: routing reads only it, never the
network. With ``registry.backend: memory`` it is the whole registry (one
worker). With ``redis`` the backend writes local ops to Redis and applies
everyone else's here; in-flight counts, failures and ejection stay per worker
either way. The class does no I/O and reads time only from the injected
clock. Methods are safe to call from many threads or greenlets.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import assert_never

from spotrelay.core.control_api import NodeList
from spotrelay.core.protocol import NodeState

from .backend import MemoryBackend, SyncBackend
from .catalog import ModelCatalog
from .exchange import Exchange
from .node import ModelStatus, Node, NodeStatus
from .ops import (
    Delete,
    Drain,
    DrainInstance,
    Eject,
    Expire,
    NodeEvent,
    Op,
    Outcome,
    Rebuild,
    Restore,
    Upsert,
)
from .outlier import EjectionPolicy, OutlierDetector

Listener = Callable[[NodeEvent, Node], None]


class RegistryFull(Exception):
    """A new node would exceed ``registry.max_nodes``; heartbeats of known nodes still pass."""

    def __init__(self, max_nodes: int) -> None:
        super().__init__(f"registry full: {max_nodes} nodes registered (registry.max_nodes)")
        self.max_nodes = max_nodes


class Registry:
    """Nodes by id, with TTL expiry, states and in-flight counts."""

    def __init__(
        self,
        ttl_s: float,
        ejection: EjectionPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_nodes: int | None = None,
        backend: SyncBackend | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_nodes = max_nodes
        self.clock = clock
        self.outliers = OutlierDetector(ejection or EjectionPolicy(), clock)
        self.catalog = ModelCatalog()
        self._nodes: dict[str, Node] = {}
        self._by_model: dict[str, tuple[Node, ...]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.listeners: list[Listener] = []
        self.backend: SyncBackend = backend or MemoryBackend()
        self.backend.bind(self)

    # -- the one way node state changes ------------------------------------------------

    def apply(self, op: Op, *, local: bool = True) -> Outcome:
        """Apply ``op``, tell the listeners what changed and hand it to the sync backend.

        ``local=False``: the op came from the backend (another worker's change)
        and is not handed back. Raises :class:`RegistryFull` for an upsert of a
        new node beyond ``max_nodes`` when no silent node can make room.
        """
        with self._lock:
            outcome = self._apply_locked(op)
        self._commit(op, outcome, local)
        return outcome

    def expire(self) -> list[Node]:
        """Apply :class:`Expire` to every node silent for ``ttl_s``; returns them.

        Nothing expires while the backend holds expiry (its view is not current).
        """
        if self.backend.holds_expiry:
            return []
        now = self.clock()
        with self._lock:
            stale = [n for n in self._nodes.values() if now - n.last_seen > self.ttl_s]
            applied = [(Expire(n.id), self._remove(n, NodeEvent.EXPIRED)) for n in stale]
            if stale:
                self._reindex()
        for op, outcome in applied:
            self._commit(op, outcome, True)
        return stale

    def record_success(self, node: Node) -> None:
        """An attempt on ``node`` succeeded (passive health)."""
        self.outliers.success(node)

    def record_failure(self, node: Node) -> bool:
        """An attempt on ``node`` failed; True when this failure ejected it."""
        return self.outliers.failure(node) and self.apply(Eject(node)).changed

    # -- applying ops (lock held) ------------------------------------------------------

    def _apply_locked(self, op: Op) -> Outcome:
        match op:
            case Upsert():
                outcome = self._upsert(op, make_room=True)
            case Drain(node_id=node_id):
                outcome = self._drain(self._nodes.get(node_id))
            case DrainInstance(instance_id=instance_id):
                outcome = self._drain_instance(instance_id)
            case Delete(node_id=node_id):
                outcome = self._remove(self._nodes.get(node_id), NodeEvent.DELETED)
            case Expire(node_id=node_id):
                outcome = self._remove(self._nodes.get(node_id), NodeEvent.EXPIRED)
            case Rebuild(nodes=nodes):
                outcome = self._rebuild(nodes)
            case Eject(node=node, event=event):
                outcome = self._eject(node, event)
            case Restore(node=node):
                outcome = self._restore(node)
            case _:
                assert_never(op)
        if isinstance(op, Upsert | Delete | Expire | Rebuild):
            self._reindex()
        if isinstance(op, Upsert | Rebuild | Restore):
            self._changed.notify_all()  # a node may have become routable: capacity waits look
        return outcome

    def _upsert(self, op: Upsert, *, make_room: bool) -> Outcome:
        """Register or heartbeat; when full, a node silent for two thirds of ``ttl_s`` may make
        room (``make_room``). Agents heartbeat every 2 s, so such a node has missed at least
        two heartbeats (default ttl_s 6) and is on its way to expiry; a node heartbeating
        now wins over it (and over junk a shared view held)."""
        now = self.clock() - max(0.0, op.age_s)
        node = self._nodes.get(op.node_id)
        if node is not None:
            outcome = Outcome(node=node, events=self._refresh(node, op, now))
        else:
            outcome = Outcome(created=True)
            if self.max_nodes is not None and len(self._nodes) >= self.max_nodes:
                outcome.evicted = self._silent_victim(op) if make_room else None
                if outcome.evicted is None:
                    raise RegistryFull(self.max_nodes)
                outcome.events += self._remove(outcome.evicted, NodeEvent.EXPIRED).events
            node = outcome.node = self._nodes[op.node_id] = _new_node(op, now)
            outcome.events.append((NodeEvent.REGISTERED, node))
        self.catalog.note(node, now)
        return outcome

    def _refresh(self, node: Node, op: Upsert, now: float) -> list[tuple[NodeEvent, Node]]:
        """A known node's heartbeat: take its report; what changed, as events."""
        report, events = op.report, []
        if node.target.url != op.target.url or node.target.address != op.target.address:
            node.target = op.target
            events.append((NodeEvent.MOVED, node))
        if node.reported_state is not report.state:
            unhealthy = report.state is NodeState.UNHEALTHY
            events.append((NodeEvent.UNHEALTHY if unhealthy else NodeEvent.STATE, node))
        node.models = frozenset(report.models)
        node.reported_state = report.state
        node.load = report.load
        node.labels = dict(report.labels)
        node.engine = report.engine
        node.instance_id = report.instance_id
        node.risk = report.risk
        node.last_seen = max(node.last_seen, now)
        if op.drained and not node.admin_drained:
            node.admin_drained = True
            events.append((NodeEvent.DRAINED, node))
        return events

    def _silent_victim(self, op: Upsert) -> Node | None:
        """The node heard from longest ago, if silent over two thirds of ``ttl_s`` and
        the incoming heartbeat is not that old itself."""
        silent_s = self.ttl_s * 2 / 3
        if op.age_s >= silent_s:
            return None
        horizon = self.clock() - silent_s
        stale = [n for n in self._nodes.values() if n.last_seen < horizon]
        return min(stale, key=lambda n: n.last_seen, default=None)

    def _drain(self, node: Node | None) -> Outcome:
        if node is None:
            return Outcome()
        changed = not node.admin_drained
        node.admin_drained = True
        return Outcome(node=node, events=[(NodeEvent.DRAINED, node)] if changed else [])

    def _drain_instance(self, instance_id: str) -> Outcome:
        """A node already draining, by its agent or an earlier call, is matched but not
        drained again (no second event)."""
        matched = [(n, n.draining) for n in self._nodes.values() if n.instance_id == instance_id]
        for node, _ in matched:
            node.admin_drained = True
        events = [(NodeEvent.DRAINED, node) for node, already in matched if not already]
        return Outcome(matched=matched, events=events)

    def _remove(self, node: Node | None, event: NodeEvent) -> Outcome:
        """Drop ``node`` (the caller reindexes); its passive-health record goes with it."""
        if node is None:
            return Outcome()
        del self._nodes[node.id]
        node.removed = True
        self.outliers.forget(node)
        return Outcome(node=node, events=[(event, node)])

    def _rebuild(self, nodes: tuple[Upsert, ...]) -> Outcome:
        """Nodes kept keep their per-worker state (in-flight counts, ejection). A node
        missing from the rebuilt view is *forgotten*, not lost: after a Redis restart
        the view can lack a node that serves fine, so what is open on it goes on (no
        cut), and its next heartbeat brings it back. A node that really died expires
        on the worker that hears from it, and that expiry reaches every worker."""
        outcome, keep = Outcome(), set()
        for op in nodes:
            try:
                outcome.events += self._upsert(op, make_room=False).events
            except RegistryFull:
                continue  # this worker's cap; the node stays known to the others
            keep.add(op.node_id)
        for node in [n for n in self._nodes.values() if n.id not in keep]:
            outcome.events += self._remove(node, NodeEvent.FORGOTTEN).events
        return outcome

    def _eject(self, node: Node, event: NodeEvent) -> Outcome:
        if node.ejected or node.removed:
            return Outcome(node=node)
        self.outliers.ejected(node)
        node.ejected = True
        return Outcome(node=node, events=[(event, node)])

    def _restore(self, node: Node) -> Outcome:
        if not node.ejected or node.removed:
            return Outcome(node=node)
        self.outliers.restored(node)
        node.ejected = False
        return Outcome(node=node, events=[(NodeEvent.RESTORED, node)])

    def _commit(self, op: Op, outcome: Outcome, local: bool) -> None:
        for event, node in outcome.events:
            for listener in self.listeners:
                listener(event, node)
        if local:
            self.backend.applied(op, outcome)

    def _reindex(self) -> None:
        by_model: dict[str, list[Node]] = {}
        for node in self._nodes.values():
            for model in node.models:
                by_model.setdefault(model, []).append(node)
        self._by_model = {m: tuple(ns) for m, ns in by_model.items()}

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
        return NodeList(tuple(n.entry(now, *self.outliers.report(n, now)) for n in nodes))

    def candidates(self, model: str) -> list[Node]:
        """Routable nodes serving ``model`` that have not gone silent."""
        horizon = self._horizon()
        return [n for n in self._by_model.get(model, ()) if n.routable and n.last_seen >= horizon]

    def model_status(self, model: str) -> ModelStatus:
        if self.candidates(model):
            return ModelStatus.AVAILABLE
        if model in self.catalog or not self._nodes:
            return ModelStatus.UNAVAILABLE
        return ModelStatus.UNKNOWN

    def has_had_capabilities(self, model: str, capabilities: frozenset[str]) -> bool:
        """Has some node serving ``model`` reported all of ``capabilities`` since start?"""
        return self.catalog.has_had_capabilities(model, capabilities)

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

    def _horizon(self) -> float:
        """Nodes last seen before this are silent (nothing is while expiry is held)."""
        return float("-inf") if self.backend.holds_expiry else self.clock() - self.ttl_s

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


def _new_node(op: Upsert, now: float) -> Node:
    report = op.report
    return Node(
        id=op.node_id,
        target=op.target,
        models=frozenset(report.models),
        reported_state=report.state,
        load=report.load,
        labels=dict(report.labels),
        registered_at=now,
        last_seen=now,
        engine=report.engine,
        instance_id=report.instance_id,
        risk=report.risk,
        admin_drained=op.drained,
    )
