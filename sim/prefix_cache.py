"""The simulated engine's prefix cache, modelled on vLLM's automatic prefix caching.

vLLM keeps the KV cache in blocks of ``block_size`` tokens and identifies a
full block by a hash of its tokens *and of every block before it*, so a block
is reusable only as part of the same prefix. A new request looks up its
prompt's full blocks from the start and stops at the first miss; the hits
skip prefill. Blocks no running request uses are evicted least recently used
first when room is needed.

That is what this models, with the simulator's own tokens (``textgen``):
``lookup`` returns how many prompt tokens are cached (whole blocks only, and
never the prompt's last token: vLLM always computes at least one), ``insert``
adds a token sequence's full blocks, touching the ones already there. The
counters are vLLM's ``prefix_cache_queries`` and ``prefix_cache_hits``, in
tokens. Pinning of blocks in use is left out: a simulated node evicts what
is oldest even if a running request's prompt holds it, which only makes the
cache a little less effective than vLLM's, for every routing policy alike.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# The defaults stand for one 24 GiB GPU (an L4 or A10G) serving an 8B model in
# bf16 (Llama-3.1-8B: 16 GB of weights; at gpu_memory_utilization 0.9 about
# 4 GiB remain for the KV cache, 128 KiB per token: ~32k tokens, 2,048 blocks
# of 16) and prefilling ~3,000 uncached tokens per second.
DEFAULT_BLOCK_TOKENS = 16
DEFAULT_CAPACITY_BLOCKS = 2048
DEFAULT_PREFILL_TOKENS_PER_S = 3000.0


@dataclass(frozen=True)
class CacheSettings:
    """``capacity_blocks`` 0 switches the cache off (every prompt token is prefilled)."""

    block_tokens: int = DEFAULT_BLOCK_TOKENS
    capacity_blocks: int = DEFAULT_CAPACITY_BLOCKS
    prefill_tokens_per_s: float = DEFAULT_PREFILL_TOKENS_PER_S


def block_hashes(tokens: Sequence[str], block_tokens: int) -> list[bytes]:
    """The chained hash of every full block of ``tokens``."""
    out: list[bytes] = []
    parent = b""
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = hashlib.blake2b(parent, digest_size=16)
        for token in tokens[start : start + block_tokens]:
            h.update(token.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        parent = h.digest()
        out.append(parent)
    return out


class PrefixCache:
    """An LRU set of chained block hashes with vLLM's hit counters."""

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.queries_total = 0  # prompt tokens looked up
        self.hits_total = 0  # of which were cached

    @property
    def enabled(self) -> bool:
        return self.settings.capacity_blocks > 0

    def __len__(self) -> int:
        return len(self._blocks)

    def cached_tokens(self, tokens: Sequence[str]) -> int:
        """How many leading tokens are cached, without counting or touching anything."""
        if not self.enabled:
            return 0
        n = 0
        for digest in block_hashes(tokens, self.settings.block_tokens):
            if digest not in self._blocks:
                break
            n += self.settings.block_tokens
        return min(n, max(0, len(tokens) - 1))

    def lookup(self, tokens: Sequence[str]) -> int:
        """A new request's prompt: the cached tokens, counted as vLLM counts them."""
        hit = self.cached_tokens(tokens)
        self.queries_total += len(tokens)
        self.hits_total += hit
        return hit

    def insert(self, tokens: Sequence[str]) -> None:
        """Cache every full block of ``tokens`` (most recently used), evicting the oldest."""
        if not self.enabled:
            return
        blocks = self._blocks
        for digest in block_hashes(tokens, self.settings.block_tokens):
            if digest in blocks:
                blocks.move_to_end(digest)
            else:
                blocks[digest] = None
        while len(blocks) > self.settings.capacity_blocks:
            blocks.popitem(last=False)

    def prefill_s(self, prompt_tokens: int, cached: int) -> float:
        """Time to prefill what is not cached."""
        rate = self.settings.prefill_tokens_per_s
        return max(0, prompt_tokens - cached) / rate if rate > 0 else 0.0

    def clear(self) -> None:
        self._blocks.clear()
