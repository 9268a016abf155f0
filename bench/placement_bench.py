"""Placement benchmark: prefix-cache hit rate, TTFT and load imbalance of routing policies.

A synthetic multi-turn chat workload (a few shared system prompts, several
turns per conversation, many conversations at once, prompt lengths in the
range of ShareGPT's) runs against 4 simulator nodes with their prefix cache
on (docs/simulator.md), through:

- spotrelay ``cache_aware`` and ``p2c`` on 1 worker, 2 workers (one Redis
  registry) and 2 routers x 2 workers (each request to a random router, as a
  load balancer would spread them);
- vllm-router (``pip install vllm-router``; skipped with a message when it is
  absent), policies ``cache_aware`` and ``round_robin``, and ``cache_aware``
  on 2 router processes (each request to a random one: the fragmented case).

Each run starts from cold caches (fresh simulators) and sends the same
conversations. Reported per run: the hit rate from the engines' own
counters (``vllm:prefix_cache_hits`` / ``queries``), TTFT p50/p99 at the
client, and load imbalance (max / mean of each node's time-averaged open
requests, sampled from ``vllm:num_requests_running + waiting``). The
**oracle** replays the requests in the order the first cache_aware run sent
them through the same cache model (``spotrelay.sim.prefix_cache``), always
picking the node with the longest cached prefix.

Loopback only; every run is bounded (``--conversations`` x ``--turns``
requests). ``python bench/placement_bench.py --help``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import openai
from router_bench import HOST, MODEL, percentile, start_redis, start_router, start_sim

from spotrelay.sim.loopback import free_port
from spotrelay.sim.prefix_cache import CacheSettings, PrefixCache
from spotrelay.sim.processes import ManagedProcess, ProcessGroup
from spotrelay.sim.textgen import render_chat, tokenize

NODES = 4
WORD_TEXT = (
    "the a of to and in is for that on with as at by from it be this are was an or we your "
    "model cluster request token cache node spot price latency stream answer travel hotel "
    "budget weather city museum train flight room booking refund policy customer order"
)
WORDS = WORD_TEXT.split()


# -- the workload -------------------------------------------------------------------------


def text(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens)).capitalize() + "."


@dataclass
class Conversation:
    system: str
    turns: list[str]  # the user messages
    max_tokens: list[int]
    history: list[dict] = field(default_factory=list)


def workload(seed: int, conversations: int, turns: int, systems: int) -> list[Conversation]:
    """Sizes in the range of ShareGPT's multi-turn chats (user turns of ~100 tokens, long-
    tailed; answers of 100-400 tokens) after one of ``systems`` shared system prompts of
    50-300 tokens, ``turns`` +-1 turns per conversation."""
    rng = random.Random(seed)
    prompts = [text(rng, rng.randint(50, 300)) for _ in range(systems)]
    out = []
    for _ in range(conversations):
        n = rng.randint(max(2, turns - 1), turns + 1)
        out.append(
            Conversation(
                system=rng.choice(prompts),
                turns=[
                    text(rng, min(600, int(rng.lognormvariate(4.3, 0.8)) + 10)) for _ in range(n)
                ],
                max_tokens=[rng.randint(100, 400) for _ in range(n)],
            )
        )
    return out


# -- one run ------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request as sent: its messages (for the oracle), answer and timing."""

    messages: list[dict]
    answer: str
    ttft: float
    start: float = 0.0  # time.monotonic() when sent (one clock for every process)


class LoadSampler(threading.Thread):
    """Samples every node's open requests (running + waiting) every 50 ms."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.samples: list[list[float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.samples.append([open_requests(p) for p in self.ports])


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
        out: dict[str, float] = {}
        for line in resp.read().decode().splitlines():
            if line.startswith("vllm:"):
                name, _, value = line.partition(" ")
                out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
        return out


def open_requests(port: int) -> float:
    m = scrape(port)
    return m.get("vllm:num_requests_running", 0.0) + m.get("vllm:num_requests_waiting", 0.0)


def drive(
    entries: list[str],
    convs: list[Conversation],
    concurrency: int,
    seed: int,
    think_s: float,
    procs: int = 4,
) -> list[Sent]:
    """Every conversation turn by turn, ``concurrency`` conversations at once, each request
    to a random entry point (a load balancer in front of several routers).

    Between an answer and the next turn the user reads and types: ``think_s`` on average
    (exponential, at most 4x the mean). Without it the next turn leaves the instant the
    answer ends, when the node that served it has just freed a slot, and ``p2c`` (fewer
    open requests wins) sends it back there more often than chance: a hit rate the
    policy owes to the benchmark's timing, not to any knowledge of the cache.

    The conversations are shared out to ``procs`` client processes: in one process the
    client's own chunk parsing (64 threads, one GIL) queued first chunks behind other
    streams' and added hundreds of milliseconds to every TTFT, whatever the policy.
    """
    rng = random.Random(seed)
    picks = [rng.randrange(1 << 30) for _ in convs]
    procs = max(1, min(procs, concurrency, len(convs)))
    shards = [
        (entries, convs[i::procs], picks[i::procs], max(1, concurrency // procs), think_s)
        for i in range(procs)
    ]
    with ProcessPoolExecutor(max_workers=procs) as pool:
        sent = [s for part in pool.map(_drive_shard, shards) for s in part]
    return sorted(sent, key=lambda s: s.start)  # the order the turns were sent in


def _drive_shard(shard: tuple) -> list[Sent]:
    entries, convs, picks, concurrency, think_s = shard
    clients = [
        openai.OpenAI(base_url=f"{e}/v1", api_key="x", max_retries=0, timeout=120) for e in entries
    ]
    sent: list[Sent] = []
    lock = threading.Lock()

    def converse(conv: Conversation, pick: int) -> None:
        messages: list[dict] = [{"role": "system", "content": conv.system}]
        think = random.Random(pick)
        for i, (user, max_tokens) in enumerate(zip(conv.turns, conv.max_tokens, strict=True)):
            if i and think_s > 0:
                time.sleep(min(4 * think_s, think.expovariate(1 / think_s)))
            messages.append({"role": "user", "content": user})
            client = clients[(pick + i) % len(clients)]
            start_t = time.monotonic()
            ttft = None
            parts: list[str] = []
            stream = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=max_tokens, stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if ttft is None:
                        ttft = time.monotonic() - start_t
                    parts.append(chunk.choices[0].delta.content)
            answer = "".join(parts)
            with lock:
                sent.append(Sent([dict(m) for m in messages], answer, ttft or 0.0, start_t))
            messages.append({"role": "assistant", "content": answer})

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for f in [pool.submit(converse, c, p) for c, p in zip(convs, picks, strict=True)]:
            f.result()
    return sent


def measure(engines: list[int], entries: list[str], args, convs) -> dict:
    before = [scrape(p) for p in engines]
    sampler = LoadSampler(engines)
    sampler.start()
    t0 = time.monotonic()
    sent = drive(entries, convs, args.concurrency, args.seed, args.think_s, args.client_procs)
    wall = time.monotonic() - t0
    sampler.halt.set()
    sampler.join()
    after = [scrape(p) for p in engines]
    queries = sum(
        a["vllm:prefix_cache_queries_total"] - b["vllm:prefix_cache_queries_total"]
        for a, b in zip(after, before, strict=True)
    )
    hits = sum(
        a["vllm:prefix_cache_hits_total"] - b["vllm:prefix_cache_hits_total"]
        for a, b in zip(after, before, strict=True)
    )
    means = [statistics.fmean(col) for col in zip(*sampler.samples, strict=True)] or [0.0]
    avg = statistics.fmean(means)
    ttfts = [s.ttft * 1000 for s in sent]
    return {
        "requests": len(sent),
        "hit_rate": hits / queries if queries else 0.0,
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        "imbalance": max(means) / avg if avg else float("nan"),
        "wall_s": wall,
        "sent": sent,
    }


def oracle(sent: list[Sent], nodes: int) -> float:
    """The hit rate of always choosing the node that holds the longest cached prefix."""
    caches = [PrefixCache(CacheSettings()) for _ in range(nodes)]
    served = [0] * nodes
    for s in sent:
        prompt = tokenize(render_chat(s.messages))
        best = max(range(nodes), key=lambda i: (caches[i].cached_tokens(prompt), -served[i]))
        served[best] += 1
        cache = caches[best]
        cache.lookup(prompt)
        cache.insert(prompt)
        cache.insert(prompt + tokenize(s.answer))
    queries = sum(c.queries_total for c in caches)
    return sum(c.hits_total for c in caches) / queries if queries else 0.0


# -- the fleets ---------------------------------------------------------------------------


def start_engines(procs, logdir, run: str, args) -> list[int]:
    extra = ["--prefill-tokens-per-s", str(args.prefill_rate)]
    return [
        start_sim(procs, logdir, f"{run}-sim{i}", args.ttft_ms, args.itl_ms, *extra)
        for i in range(NODES)
    ]


def spotrelay_entries(
    procs, logdir, run: str, engines, policy: str, routers: int, workers: int, load_factor=None
):
    redis_url = start_redis(procs, logdir) if workers > 1 or routers > 1 else None
    prefix = f"placement-{run}"
    return [
        "http://{}:{}".format(
            HOST,
            start_router(
                procs,
                logdir,
                engines if r == 0 else [],
                name=f"{run}-router{r}",
                workers=workers,
                redis_url=redis_url,
                redis_prefix=prefix if redis_url else None,
                routing={"policy": policy, **({"load_factor": load_factor} if load_factor else {})},
                expect_nodes=len(engines),
            ),
        )
        for r in range(routers)
    ]


def vllm_router_binary() -> str | None:
    return shutil.which("vllm-router") or (
        str(Path(sys.executable).with_name("vllm-router"))
        if Path(sys.executable).with_name("vllm-router").exists()
        else None
    )


def vllm_router_entries(procs, logdir, run: str, engines, policy: str, routers: int):
    binary = vllm_router_binary()
    assert binary is not None
    entries = []
    for r in range(routers):
        port = free_port()
        argv = [
            binary, "--host", HOST, "--port", str(port), "--policy", policy,
            "--prometheus-port", str(free_port()),
            "--worker-urls", *[f"http://{HOST}:{e}" for e in engines],
        ]  # fmt: skip
        procs.start(ManagedProcess(f"{run}-vllm-router{r}", argv, log_path=logdir / f"{run}.log"))
        wait_http(f"http://{HOST}:{port}/v1/models")
        entries.append(f"http://{HOST}:{port}")
    return entries


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never answered 200")
        time.sleep(0.2)


# -- main ---------------------------------------------------------------------------------

RUNS = [
    ("spotrelay cache_aware, 1 worker", "spotrelay", "cache_aware", 1, 1),
    ("spotrelay p2c, 1 worker", "spotrelay", "p2c", 1, 1),
    ("spotrelay cache_aware, 2 workers", "spotrelay", "cache_aware", 1, 2),
    ("spotrelay p2c, 2 workers", "spotrelay", "p2c", 1, 2),
    ("spotrelay cache_aware, 2 routers x 2 workers", "spotrelay", "cache_aware", 2, 2),
    ("spotrelay p2c, 2 routers x 2 workers", "spotrelay", "p2c", 2, 2),
    ("vllm-router cache_aware, 1 process", "vllm-router", "cache_aware", 1, 1),
    ("vllm-router round_robin, 1 process", "vllm-router", "round_robin", 1, 1),
    ("vllm-router cache_aware, 2 processes", "vllm-router", "cache_aware", 2, 1),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=128)
    p.add_argument("--turns", type=int, default=5, help="turns per conversation (+-1)")
    p.add_argument("--systems", type=int, default=4, help="distinct system prompts")
    p.add_argument("--concurrency", type=int, default=64, help="conversations at once")
    p.add_argument("--think-s", type=float, default=2.0, help="mean user time between turns")
    p.add_argument("--client-procs", type=int, default=4, help="client processes")
    p.add_argument("--ttft-ms", type=float, default=20.0, help="simulator base TTFT")
    p.add_argument(
        "--itl-ms", type=float, default=25.0, help="an 8B model decoding on a 24 GiB GPU in a batch"
    )
    p.add_argument("--prefill-rate", type=float, default=3000.0, help="uncached tokens/s")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--load-factor", type=float, help="spotrelay routing.load_factor")
    p.add_argument("--only", help="run only the runs whose name contains this text")
    p.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)

    convs = workload(args.seed, args.conversations, args.turns, args.systems)
    have_peer = vllm_router_binary() is not None
    if not have_peer:
        print("vllm-router not installed (pip install vllm-router): its runs are skipped")
    results: dict[str, dict] = {}
    oracle_rate = None
    logroot = Path(tempfile.mkdtemp(prefix="placement-bench-"))
    for name, kind, policy, routers, workers in RUNS:
        if args.only and args.only not in name:
            continue
        if kind == "vllm-router" and not have_peer:
            continue
        procs = ProcessGroup()
        run = name.split(",")[0].replace(" ", "-") + f"-{routers}x{workers}"
        logdir = logroot / run
        logdir.mkdir(parents=True)
        try:
            engines = start_engines(procs, logdir, run, args)
            if kind == "spotrelay":
                entries = spotrelay_entries(
                    procs, logdir, run, engines, policy, routers, workers, args.load_factor
                )
            else:
                entries = vllm_router_entries(procs, logdir, run, engines, policy, routers)
            fresh = [Conversation(c.system, list(c.turns), list(c.max_tokens)) for c in convs]
            result = measure(engines, entries, args, fresh)
        finally:
            procs.stop_all()
        if oracle_rate is None:
            oracle_rate = oracle(result["sent"], NODES)
        del result["sent"]
        results[name] = result
        print(
            f"{name:48s} hit {result['hit_rate']:6.1%}  ttft p50 {result['ttft_p50_ms']:7.1f}"
            f" p99 {result['ttft_p99_ms']:7.1f} ms  imbalance {result['imbalance']:.2f}"
            f"  ({result['requests']} requests, {result['wall_s']:.1f} s)",
            flush=True,
        )
    print_summary(results, oracle_rate)
    if args.json:
        args.json.write_text(json.dumps({"oracle": oracle_rate, "runs": results}, indent=2))
    shutil.rmtree(logroot, ignore_errors=True)
    return 0


def print_summary(results: dict[str, dict], oracle_rate: float | None) -> None:
    print()
    if oracle_rate is not None:
        print(f"oracle (longest cached prefix, same cache model): hit {oracle_rate:.1%}")
    ca = results.get("spotrelay cache_aware, 1 worker")
    p2c = results.get("spotrelay p2c, 1 worker")
    if ca and p2c and oracle_rate:
        print(
            f"cache_aware / oracle hit rate: {ca['hit_rate'] / oracle_rate:.2f}  (target >= 0.90)"
        )
        print(f"cache_aware / p2c hit rate:    {ca['hit_rate'] / p2c['hit_rate']:.2f}  (>= 2)")
        print(
            f"p2c / cache_aware TTFT p50:    {p2c['ttft_p50_ms'] / ca['ttft_p50_ms']:.2f}  (>= 2)"
        )
    frag = results.get("spotrelay cache_aware, 2 routers x 2 workers")
    peer = results.get("vllm-router cache_aware, 2 processes")
    if frag and peer:
        print(
            f"2 routers x 2 workers: spotrelay cache_aware hit {frag['hit_rate']:.1%} vs "
            f"vllm-router cache_aware (2 processes) {peer['hit_rate']:.1%}"
        )


if __name__ == "__main__":
    sys.exit(main())
