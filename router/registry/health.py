"""Background upkeep of the registry: TTL expiry and active probing of ejected nodes.

Passive health (counting failures on real traffic, see :mod:`.outlier`)
ejects a node; this loop brings it back. Once
a node's ejection time is over it is probed with ``GET /health`` (on a 404,
``GET /v1/models``) every ``health.probe_interval_s``; the first 200 restores it. Probes run
concurrently so one hanging node cannot delay the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from spotrelay.core.ticker import Ticker

from ..transport.pools import NodePools
from ..transport.upstream import UPSTREAM_ERRORS
from .node import Node
from .ops import Restore
from .state import Registry

log = logging.getLogger("spotrelay.router.registry.health")


def http_probe(timeout_s: float, pools: NodePools) -> Callable[[Node], bool]:
    """A probe that GETs ``/health`` through the node's own connection pool.

    Engines without ``/health`` (llama-cpp-python's server answers 404) are
    probed with ``GET /v1/models`` instead, the rule the node agent applies.
    """

    def get(node: Node, path: str) -> int:
        resp = pools.get(node).request(
            "GET", path, connect_timeout=timeout_s, read_timeout=timeout_s
        )
        resp.read()
        resp.release()
        return resp.status

    def probe(node: Node) -> bool:
        try:
            status = get(node, "/health")
            if status == 404:
                status = get(node, "/v1/models")
        except UPSTREAM_ERRORS:
            return False
        return status == 200

    return probe


class HealthMonitor(Ticker):
    name = "health"

    def __init__(
        self,
        registry: Registry,
        probe: Callable[[Node], bool],
        *,
        probe_interval_s: float,
        probe_timeout_s: float,
    ) -> None:
        self.registry = registry
        self.probe = probe
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        super().__init__(min(probe_interval_s, max(0.05, registry.ttl_s / 4), 1.0))
        self._last_probe = 0.0

    def expire(self) -> list[Node]:
        """Expire silent nodes (the registry shares each expiry through its backend)."""
        expired = self.registry.expire()
        for node in expired:
            log.warning(
                "node %s expired: no heartbeat for %.1fs (%d requests open on it are cut)",
                node.id,
                self.registry.ttl_s,
                node.in_flight,
            )
        return expired

    def probe_ejected(self) -> list[Node]:
        """Probe every ejected node that is due; returns those restored."""
        due = self.registry.outliers.due_for_probe()
        if not due:
            return []
        results: dict[str, bool] = {}

        def run(node: Node) -> None:
            results[node.id] = self.probe(node)

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in due]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.probe_timeout_s + 1.0)
        restored = []
        for node in due:
            if results.get(node.id) and self.registry.apply(Restore(node)).changed:
                log.info("node %s restored: /health answered 200", node.id)
                restored.append(node)
        return restored

    def run_once(self, now: float) -> None:
        self.expire()
        if now - self._last_probe >= self.probe_interval_s:
            self._last_probe = now
            self.probe_ejected()

    def tick(self) -> None:
        self.run_once(self.registry.clock())
