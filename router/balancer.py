"""Choosing a node for a request.

Power of two choices over least outstanding requests: sample two candidates at
random and take the one with fewer requests open *from this router*; when
those tie, the engine's reported queue (``running + waiting``) decides. P2C
avoids the herd behaviour of "always the least loaded" (every router piling
onto the same idle node between heartbeats) while staying close to optimal.

With a session key (``X-Session-ID``), rendezvous (highest-random-weight)
hashing picks the same node for the same session as long as it is routable,
which keeps vLLM's prefix cache warm; when the fleet changes only the
sessions of the nodes that left move. Retries pass ``exclude`` so that a
retry lands on a different node.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection, Sequence

from .registry import Node


def rendezvous_weight(key: str, node_id: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Balancer:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    def pick(
        self,
        candidates: Sequence[Node],
        *,
        exclude: Collection[str] = (),
        session_key: str | None = None,
    ) -> Node | None:
        """The node to try next, or ``None`` when no candidate is left."""
        if exclude:
            candidates = [n for n in candidates if n.id not in exclude]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if session_key:
            return max(candidates, key=lambda n: rendezvous_weight(session_key, n.id))
        a, b = self.rng.sample(candidates, 2)
        return a if self._key(a) <= self._key(b) else b

    @staticmethod
    def _key(node: Node) -> tuple[int, int]:
        return (node.in_flight, node.queue)
