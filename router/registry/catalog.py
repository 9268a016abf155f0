"""The models the fleet has served since start, and the engine capabilities seen for each.

A request for a model no node serves right now is worth waiting for when
some node has served it (capacity comes back), and a 404 when none ever did;
a stream continuation that needs a capability waits for a replacement node
only where the fleet has had such a node. Both questions outlive the nodes,
so the answers are kept here, bounded to the most recently served models.
"""

from __future__ import annotations

from .node import Node

KNOWN_MODELS_CAP = 10_000


class ModelCatalog:
    """Updated under the registry's lock as nodes report; read without it."""

    def __init__(self, cap: int = KNOWN_MODELS_CAP) -> None:
        self.cap = cap
        self._seen: dict[str, float] = {}  # model -> when a node last reported it
        self._caps: dict[str, frozenset[str]] = {}

    def note(self, node: Node, now: float) -> None:
        for model in node.models:
            self._seen[model] = now
            caps = self._caps.get(model, frozenset())
            if not node.engine.capabilities <= caps:
                self._caps[model] = caps | node.engine.capabilities
        if len(self._seen) > self.cap:
            oldest = sorted(self._seen, key=self._seen.__getitem__)
            for model in oldest[: len(self._seen) - self.cap]:
                del self._seen[model]
                self._caps.pop(model, None)

    def __contains__(self, model: str) -> bool:
        return model in self._seen

    def has_had_capabilities(self, model: str, capabilities: frozenset[str]) -> bool:
        return capabilities <= self._caps.get(model, frozenset())

    def models(self) -> list[str]:
        return sorted(self._seen)
