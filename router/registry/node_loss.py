"""What the router does when a node is lost: cut what is open on it; eject a frozen node.

A node that leaves the registry, reports ``unhealthy``, is ejected or found
frozen can finish none of the requests open on it, and a silent one would
not even fail them: they would wait for their timeouts. :class:`NodeLoss`
listens to the registry's events and cuts every exchange open on such a node
(see :mod:`.exchange`), so each is retried or resumed at once. Every change
reaches the registry as an op through one path (:meth:`Registry.apply`),
the ones the shared registry applies from other workers and routers too, so
every worker cuts its own requests.
"""

from __future__ import annotations

import logging

from ..metrics import RouterMetrics
from .node import Node
from .ops import NODE_LOST_EVENTS, Eject, NodeEvent
from .state import Registry

log = logging.getLogger("spotrelay.router")


class NodeLoss:
    """Registry listener (cuts) and the sweeper's frozen-node report (ejects)."""

    def __init__(self, registry: Registry, metrics: RouterMetrics) -> None:
        self.registry = registry
        self.metrics = metrics
        registry.listeners.append(self.on_node_event)

    def on_node_event(self, event: NodeEvent, node: Node) -> None:
        """Cut every exchange open on a node lost by ``event``."""
        if event not in NODE_LOST_EVENTS:
            return
        cut = sum(ex.cut(f"node {node.id} {event}") for ex in self.registry.open_exchanges(node))
        if cut:
            self.metrics.node_lost_cuts.labels(event).inc(cut)
            log.warning(
                "node %s %s: cut %d open request(s); streams resume, the rest are retried",
                node.id,
                event,
                cut,
            )

    def frozen(self, node: Node, streams: int, longest_s: float) -> None:
        """Every stream open on ``node`` stalled at once: the node is frozen. Eject it (no
        new work; probes restore it), which cuts what is open on it, without waiting for
        its heartbeats to expire (a hung GPU's agent may never stop sending them)."""
        if node.ejected or node.removed:
            return
        log.warning(
            "node %s frozen: all %d open streams stalled (longest %.1fs without an event); "
            "ejected, its open requests are cut and moved",
            node.id,
            streams,
            longest_s,
        )
        self.registry.apply(Eject(node, NodeEvent.FROZEN))
