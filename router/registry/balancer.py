"""Choosing a node for a request.

Two policies (``routing.policy``):

- ``cache_aware`` (default): the node the request's prefix maps to, by
  consistent hashing with bounded loads (:mod:`.placement`), so a
  conversation's turns land where its history is cached.
- ``p2c``: power of two choices over least outstanding requests: sample two
  candidates at random and take the one with fewer requests open *from this
  router*; when those tie, the engine's reported queue (``running +
  waiting``) decides. P2C avoids the herd behaviour of "always the least
  loaded" (every router piling onto the same idle node between heartbeats)
  while staying close to optimal. ``cache_aware`` falls back to it for a
  request with no prompt to key by.

With a session key (``X-Session-ID``), rendezvous (highest-random-weight)
hashing picks the same node for the same session as long as it is routable,
under either policy; when the fleet changes only the sessions of the nodes
that left move. Long requests avoid at-risk nodes first (:mod:`.placement`).
Retries pass ``exclude`` so that a retry lands on a different node.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence

from .node import Node
from .placement import Placement, PrefixIndex, cache_aware_pick, safe_for

POLICIES = ("cache_aware", "p2c")


def rendezvous_weight(key: str, node_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Balancer:
    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        policy: str = "p2c",
        load_factor: float = 2.0,
        load_slack: float = 2.0,
        index: PrefixIndex | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.policy = policy
        self.load_factor = load_factor
        self.load_slack = load_slack
        self.index = index if index is not None else PrefixIndex()

    @property
    def cache_aware(self) -> bool:
        return self.policy == "cache_aware"

    def pick(
        self,
        candidates: Sequence[Node],
        *,
        exclude: Collection[str] = (),
        session_key: str | None = None,
        placement: Placement | None = None,
    ) -> Node | None:
        """The node to try next, or ``None`` when no candidate is left."""
        if exclude:
            candidates = [n for n in candidates if n.id not in exclude]
        if not candidates:
            return None
        if session_key:
            return max(candidates, key=lambda n: rendezvous_weight(session_key, n.id))
        if placement is not None:
            candidates = safe_for(candidates, placement)
        if len(candidates) == 1:
            return candidates[0]
        if self.cache_aware and placement is not None:
            node = cache_aware_pick(
                candidates,
                placement,
                load_factor=self.load_factor,
                slack=self.load_slack,
                weight=rendezvous_weight,
                index=self.index,
            )
            if node is not None:
                return node
        a, b = self.rng.sample(candidates, 2)
        return a if self._key(a) <= self._key(b) else b

    def served(self, placement: Placement | None, node: Node) -> None:
        """``node`` takes the request: remember which node holds its prefix blocks."""
        if placement is not None and placement.key is not None and self.cache_aware:
            self.index.record(placement.key, node.id)

    @staticmethod
    def _key(node: Node) -> tuple[int, int]:
        return (node.in_flight, node.queue)
