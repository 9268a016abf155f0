"""The simulator's prefix cache: the I/O-free model, then a real simulator's timing and
vLLM's counters on /metrics."""

from __future__ import annotations

import time

import openai

from spotrelay.sim.prefix_cache import CacheSettings, PrefixCache, block_hashes
from spotrelay.sim.processes import ProcessGroup
from tests.support import scrape, start_sim_vllm


def toks(n: int, tag: str = "a") -> list[str]:
    return [f" {tag}{i}" for i in range(n)]


def test_only_whole_leading_blocks_hit_and_the_last_token_is_always_computed():
    cache = PrefixCache(CacheSettings(block_tokens=4, capacity_blocks=100))
    prompt = toks(10)
    assert cache.lookup(prompt) == 0
    cache.insert(prompt)  # two whole blocks (8 tokens) cached
    assert cache.lookup(prompt) == 8
    assert cache.lookup(prompt[:8]) == 7, "a fully cached prompt still computes its last token"
    assert cache.lookup([*toks(3), "x", *prompt[4:]]) == 0, "blocks are chained: a changed "
    "first block makes every later block a miss"
    assert (cache.queries_total, cache.hits_total) == (10 + 10 + 8 + 10, 8 + 7)


def test_least_recently_used_blocks_are_evicted_first():
    cache = PrefixCache(CacheSettings(block_tokens=2, capacity_blocks=4))
    a, b = toks(4, "a"), toks(4, "b")
    cache.insert(a)
    cache.insert(b)
    cache.insert(a)  # touch a: b is now the oldest
    cache.insert(toks(4, "c"))
    assert cache.cached_tokens([*a, "x"]) == 4
    assert cache.cached_tokens([*b, "x"]) == 0
    assert len(cache) == 4


def test_off_and_prefill_time():
    off = PrefixCache(CacheSettings(capacity_blocks=0))
    off.insert(toks(64))
    assert off.lookup(toks(64)) == 0
    cache = PrefixCache(CacheSettings(prefill_tokens_per_s=1000))
    assert cache.prefill_s(1500, 500) == 1.0
    assert block_hashes(toks(5), 4) != block_hashes(toks(5, "z"), 4)


def test_a_repeated_prompt_is_prefilled_faster_and_counted_as_vllm_counts_it(procs, logdir):
    sim = start_sim_vllm(
        procs,
        logdir,
        "--ttft-ms",
        "5",
        "--itl-ms",
        "1",
        "--prefill-tokens-per-s",
        "2000",
        "--max-model-len",
        "8192",
    )
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=30)
    system = "You answer questions about the weather in short sentences. " * 100
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Rain?"}]
    prompt_tokens = None

    def ttft() -> float:
        nonlocal prompt_tokens
        start = time.monotonic()
        stream = client.chat.completions.create(
            model="sim-model",
            messages=messages,
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        first = None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic() - start
            if chunk.usage:
                prompt_tokens = chunk.usage.prompt_tokens
        assert first is not None
        return first

    cold = ttft()
    warm = ttft()
    assert prompt_tokens and prompt_tokens > 1000
    # ~1,100 uncached tokens at 2,000/s is ~0.55 s; cached, only the last partial block.
    assert cold > 0.4 and warm < cold / 3, (cold, warm)
    url = sim.url + "/metrics"
    queries = scrape(url, "vllm:prefix_cache_queries_total")
    hits = scrape(url, "vllm:prefix_cache_hits_total")
    assert queries == 2 * prompt_tokens
    block = 16
    assert hits == (prompt_tokens - 1) // block * block


def test_the_cache_can_be_switched_off(procs: ProcessGroup, logdir):
    sim = start_sim_vllm(procs, logdir, "--prefix-cache-blocks", "0", "--ttft-ms", "1")
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=30)
    for _ in range(2):
        client.completions.create(model="sim-model", prompt="hello " * 100, max_tokens=2)
    assert scrape(sim.url + "/metrics", "vllm:prefix_cache_hits_total") == 0
    assert scrape(sim.url + "/metrics", "vllm:prefix_cache_queries_total") == 0
