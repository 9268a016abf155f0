"""Cache-aware and risk-aware node choice (``routing.policy: cache_aware``).

A request goes to the node its prefix anchor maps to by rendezvous hashing
(:mod:`.prefix_key` says what the anchor covers), skipping nodes above the
load bound: consistent hashing with bounded loads (Mirrokni, Thorup and
Zadimoghaddam, 2018). Rendezvous order depends only on the anchor and the
node ids, so every worker of every router makes the same choice for the
same registry view without sharing any per-request state, and when a node
comes or goes only the anchors whose first choice it was move. The bound is
per worker: a node is passed over when one more request would take it above
``load_factor * (open + 1) / nodes`` of this worker's open requests (each
worker bounds its share, so the sum is bounded too).

Two spot-specific rules come first:

- **risk**: a *long* request (``max_tokens`` at or above
  ``routing.long_request_tokens``, none given, or the long-request header)
  avoids nodes whose agent reports ``risk: elevated`` (a rebalance
  recommendation) while any other candidate is left; short requests still go
  there, so the node keeps earning until it is told to drain.
- **memory of this worker**: a request whose prompt shares, beyond a shared
  system prompt, blocks of a prompt this worker placed before (the next
  turn of a conversation) goes
  where that one went, load permitting, as this worker's :class:`PrefixIndex`
  remembers it; so a conversation that once spilled to another node under
  load stays with its history. With no such memory (another worker placed
  the last turn) the anchor decides, the same on every worker.
- **resume**: a continuation (prompt + the answer so far) goes to the node
  that most recently served the longest part of that text, even if that part
  is only a shared system prompt, load permitting; else by its anchor.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spotrelay.core.protocol import Risk

from .node import Node
from .prefix_key import PrefixKey

Weight = Callable[[str, str], int]


@dataclass(frozen=True)
class Placement:
    """What the balancer knows of a request beyond its candidates."""

    key: PrefixKey | None = None
    long: bool = False
    resume: bool = False


class PrefixIndex:
    """Which nodes last served each prefix block this worker routed (bounded, LRU).

    Each block keeps its ``owners_per_key`` most recent distinct nodes: a system
    prompt many conversations share is on several nodes, and a continuation
    that may not go back to the node that broke wants to know the others.
    It is per worker, so it would fragment like any per-process prefix tree;
    it only refines the anchor's choice (see the module docstring). A node that
    left needs no clean-up: lookups consider only the request's candidates, and
    its entries age out like any other.
    """

    def __init__(self, max_keys: int = 200_000, owners_per_key: int = 4) -> None:
        self.max_keys = max_keys
        self.owners_per_key = owners_per_key
        self._owners: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._homes: OrderedDict[str, str] = OrderedDict()  # anchor -> node

    def __len__(self) -> int:
        return len(self._owners)

    def record(self, key: PrefixKey, node_id: str) -> None:
        """``node_id`` takes a request with ``key``: it holds its blocks, and is where the
        conversation (the anchor) went last."""
        owners = self._owners
        keep = self.owners_per_key - 1
        for block in key.chain:
            before = owners.get(block, ())
            owners[block] = (node_id, *[n for n in before if n != node_id][:keep])
            owners.move_to_end(block)
        while len(owners) > self.max_keys:
            owners.popitem(last=False)
        homes = self._homes
        homes[key.anchor] = node_id
        homes.move_to_end(key.anchor)
        while len(homes) > self.max_keys:
            homes.popitem(last=False)

    def last_home(self, anchor: str) -> str | None:
        """Where this worker last placed a request with this anchor (the conversation)."""
        return self._homes.get(anchor)

    def longest(
        self, chain: Sequence[str], usable: Callable[[str], bool]
    ) -> tuple[str, int] | None:
        """(node id, blocks shared) of the deepest recorded block with a usable node
        (the most recent one of its nodes)."""
        for depth in range(len(chain), 0, -1):
            for node_id in self._owners.get(chain[depth - 1], ()):
                if usable(node_id):
                    return node_id, depth
        return None

    def owners(self, key: str) -> tuple[str, ...]:
        return self._owners.get(key, ())


def load_cap(candidates: Sequence[Node], load_factor: float, slack: float = 2.0) -> float:
    """A node takes one more request only while its open requests (of this worker), with
    that one, stay within this: ``load_factor`` times the mean after the request, or the
    mean plus ``slack``, whichever is more (and never below one: an idle fleet takes a
    request anywhere).

    Both are needed, as in vllm-router's balance thresholds: without the ceiling
    of the textbook bound, a relative bound alone on a worker's handful of open
    requests (a router with several workers, each seeing a share) spilled
    conversations off their node at 1 or 2 open requests, and every spill
    re-prefills a whole history (measured, docs/benchmarks.md).
    """
    mean = (sum(n.in_flight for n in candidates) + 1) / len(candidates)
    return max(1.0, load_factor * mean, mean + slack)


def safe_for(candidates: Sequence[Node], placement: Placement) -> Sequence[Node]:
    """Long requests keep off at-risk nodes while another candidate is left."""
    if not placement.long:
        return candidates
    calm = [n for n in candidates if n.risk is Risk.NONE]
    return calm or candidates


def cache_aware_pick(
    candidates: Sequence[Node],
    placement: Placement,
    *,
    load_factor: float,
    weight: Weight,
    slack: float = 2.0,
    index: PrefixIndex | None = None,
) -> Node | None:
    """The cache-aware choice, or None when the request has no prefix to place by."""
    key = placement.key
    if key is None:
        return None
    cap = load_cap(candidates, load_factor, slack)
    if index is not None:
        by_id = {n.id: n for n in candidates}

        def usable(node_id: str) -> bool:
            return node_id in by_id and by_id[node_id].in_flight + 1 <= cap

        if placement.resume:  # any block of its text counts, a shared system prompt too
            found = index.longest(key.chain, usable)
            if found is not None:
                return by_id[found[0]]
        home = index.last_home(key.anchor)
        if home is not None and usable(home):  # the conversation's last turn went there
            return by_id[home]
    ordered = sorted(candidates, key=lambda n: weight(key.anchor, n.id), reverse=True)
    for node in ordered:
        if node.in_flight + 1 <= cap:
            return node
    return min(ordered, key=lambda n: n.in_flight)  # all at the bound: the least loaded


LIMIT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def is_long(doc: dict[str, object], *, hint: bool, threshold: int) -> bool:
    """A generation that may run long: marked so, asking for ``threshold`` tokens, or no limit.

    Bodies that generate nothing (embeddings, rerank, tokenize) are never long.
    """
    if hint:
        return True
    if not any(k in doc for k in ("messages", "prompt")) and "input" not in doc:
        return False
    for key in LIMIT_KEYS:
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value >= threshold
    return "messages" in doc or "prompt" in doc or "instructions" in doc
