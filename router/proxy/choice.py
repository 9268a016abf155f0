"""Which node an attempt goes to, and waiting for one when none is routable.

The balancer (:mod:`spotrelay.router.registry.balancer`) picks among the
nodes serving the request's model (and reporting the engine capabilities it
requires), weighing the prompt's prefix keys and the risk rule
(:mod:`spotrelay.router.registry.placement`). A request finding no routable
node waits up to ``routing.no_capacity_wait_s`` for one to appear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from spotrelay.core.logs import clip

from ..metrics import RouterMetrics
from ..registry.balancer import Balancer
from ..registry.node import Node
from ..registry.placement import Placement, is_long
from ..registry.prefix_key import prefix_key
from ..registry.state import Registry
from ..settings import Routing
from .request import ApiError, ProxyRequest

log = logging.getLogger("spotrelay.router")


class NodeChoice:
    """Picks the next node for a request; waits for capacity (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        balancer: Balancer,
        routing: Routing,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.balancer = balancer
        self.routing = routing
        self.metrics = metrics
        self.clock = clock

    def choose(self, req: ProxyRequest, *, retrying: bool) -> Node | ApiError | None:
        """The next node; None when every routable node was tried; ApiError on no capacity."""
        placement = self.placement(req)
        candidates = self.candidates(req)
        node = self._pick(req, candidates, placement)
        if node is not None:
            return node
        if candidates and not req.follow_up:
            return None
        log.info(
            "no %s node serves the model; waiting for capacity",
            "untried" if candidates else "ready",
            extra={"request_id": req.request_id, "model": clip(req.model)},
        )
        node = self._wait_for_capacity(req, placement)
        if node is not None or retrying or (req.client is not None and req.client.gone):
            return node
        waited = self.routing.no_capacity_wait_s
        return ApiError(
            503,
            f"no ready node serves {req.wanted()} (waited {waited:g}s); retry later",
            code="no_capacity",
            headers={"Retry-After": str(self.routing.retry_after_s)},
        )

    def _pick(self, req: ProxyRequest, candidates: list[Node], placement: Placement) -> Node | None:
        node = self.balancer.pick(
            candidates, exclude=req.tried, session_key=req.session_key, placement=placement
        )
        if node is not None:
            self.balancer.served(placement, node)
        return node

    def _wait_for_capacity(self, req: ProxyRequest, placement: Placement) -> Node | None:
        """A node that became routable within the wait; None when the wait ran out, or
        the client left (``req.client.gone``)."""
        limit = min(self.clock() + self.routing.no_capacity_wait_s, req.deadline)
        while (remaining := limit - self.clock()) > 0:
            self.registry.wait_for_change(min(remaining, 0.5))
            if req.client is not None and req.client.check():
                return None
            node = self._pick(req, self.candidates(req), placement)
            if node is not None:
                self.metrics.capacity_waits.labels("served").inc()
                return node
        self.metrics.capacity_waits.labels("timed_out").inc()
        return None

    def placement(self, req: ProxyRequest) -> Placement:
        """What the balancer weighs besides load: the prompt's prefix keys and the risk rule."""
        r = self.routing
        key = None
        if self.balancer.cache_aware and req.doc:
            key = prefix_key(
                req.doc, block_chars=r.prefix_block_chars, anchor_chars=r.prefix_anchor_chars
            )
        long = r.risk_aware and is_long(
            req.doc, hint=req.long_hint, threshold=r.long_request_tokens
        )
        return Placement(key=key, long=long, resume=req.follow_up)

    def candidates(self, req: ProxyRequest) -> list[Node]:
        """Routable nodes for ``req``: those serving its model (any, ``model`` empty),
        and reporting the engine capabilities it ``requires``."""
        if req.model:
            nodes = self.registry.candidates(req.model)
        else:
            by_id: dict[str, Node] = {}
            for model in self.registry.ready_models():
                for node in self.registry.candidates(model):
                    by_id.setdefault(node.id, node)
            nodes = list(by_id.values())
        if req.requires:
            nodes = [n for n in nodes if req.requires <= n.engine.capabilities]
        return nodes
