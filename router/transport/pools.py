"""One keep-alive connection pool per node, owned by the transport side, not the registry.

The registry says who the nodes are; how to talk to them is this map's: a
pool per node id and target (URL and vetted address), made when the node
registers, replaced when it moves to another address and closed when it
leaves the registry. It hears all that as a registry listener, so a pool
never outlives its node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..registry.node import Node
from ..registry.ops import NodeEvent
from .netpolicy import NodeTarget

PoolFactory = Callable[[NodeTarget], Any]  # an h1.Pool, or a test's stand-in


class NodePools:
    """Pools by node id, each with the node object and target it was made for."""

    def __init__(self, factory: PoolFactory) -> None:
        self.factory = factory
        self._pools: dict[str, tuple[Node, NodeTarget, Any]] = {}
        self._lock = threading.Lock()

    def get(self, node: Node) -> Any:
        """The node's pool; a new one for a node that moved or registered again.

        A node removed meanwhile gets a pool that closes each connection after
        use: storing it would leak it, as the removal closed the node's pool.
        """
        target = node.target  # replaced, never changed in place, when the node moves
        entry = self._pools.get(node.id)
        if entry is not None and entry[0] is node and entry[1] is target:
            return entry[2]  # every request but a node's first: no lock
        with self._lock:
            entry = self._pools.get(node.id)
            if entry is not None and entry[0] is node and entry[1] is target:
                return entry[2]
            pool = self.factory(target)
            if node.removed:
                _close(pool)
                return pool
            self._pools[node.id] = (node, target, pool)
        if entry is not None:
            _close(entry[2])
        return pool

    def on_node_event(self, event: NodeEvent, node: Node) -> None:
        """Registry listener: a pool for a node that registered or moved (the one for its
        old address closed); the pool of a node that left closed."""
        if event in (NodeEvent.REGISTERED, NodeEvent.MOVED):
            self.get(node)
        elif node.removed:
            with self._lock:
                entry = self._pools.get(node.id)
                if entry is None or entry[0] is not node:
                    return  # none made, or already one for a node registered again since
                del self._pools[node.id]
            _close(entry[2])


def _close(pool: Any) -> None:
    if hasattr(pool, "close"):
        pool.close()
