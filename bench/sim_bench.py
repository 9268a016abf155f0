#!/usr/bin/env python3
"""Benchmark: can one ``spotrelay sim vllm`` process hold N concurrent streams on time?

Starts the simulator as a subprocess on a free loopback port, then opens
``--streams`` concurrent streaming completions (starts spread over
``--ramp-s``) from ``--clients`` separate client processes, and reports:

* concurrency held: peak ``vllm:num_requests_running`` scraped during the run,
  and how many streams finished with every token;
* tokens/s delivered;
* inter-token gap p50/p99/max and the extra delay over ``--itl-ms`` (p99 is
  the acceptance figure: within 5 ms);
* the simulator's own view: how late its ticker wrote tokens (from
  ``/_control/stats``), which separates its timing from the clients';
* TTFT p50/p99 (request sent to first token; includes connection set-up);
* CPU used by the simulator and by each client process.

The default client is a minimal asyncio HTTP/1.1 client that timestamps each
SSE event in ``data_received``: the aiohttp client costs ~40 us of CPU per
event, so at 1,000 streams it (not the simulator) would be what is measured
(``--client aiohttp`` shows it). On a 2-core machine the clients share the
CPU with the simulator; keep other load off the machine while measuring.

Usage::

    .venv/bin/python bench/sim_bench.py                         # 1,000 streams, itl 50 ms
    .venv/bin/python bench/sim_bench.py --itl-ms 20 --json      # machine-readable
    .venv/bin/python bench/sim_bench.py --client aiohttp        # with the aiohttp client
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from spotrelay.sim.loopback import free_port, http_ok
from spotrelay.sim.processes import ManagedProcess, spotrelay_argv

RUNNING_RE = re.compile(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$", re.M)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[idx]


# ---------------------------------------------------------------------------
# client process


def _new_result() -> dict:
    return {
        "ok": 0,
        "errors": 0,
        "short": 0,
        "ttft": [],
        "gaps": [],  # (time of the earlier token, gap)
        "tokens": 0,
        "firsts": [],
        "lasts": [],
    }


def _record(out: dict, t0: float, stamps: list[float], tokens: int) -> None:
    """Account one finished stream; ``stamps`` has one arrival time per SSE event."""
    content = stamps[:tokens]  # then come the final chunk and [DONE]
    if len(content) < tokens:
        out["short"] += 1
        return
    out["ok"] += 1
    out["ttft"].append(content[0] - t0)
    out["gaps"].extend((a, b - a) for a, b in itertools.pairwise(content))
    out["firsts"].append(content[0])
    out["lasts"].append(content[-1])
    out["tokens"] += len(content)


class _SseCounter(asyncio.Protocol):
    """Minimal HTTP/1.1 client: sends one request, timestamps each SSE event on arrival.

    Timestamps are taken in ``data_received`` (no task switch in between),
    and an event costs a ``bytes.count``: cheap enough that one process reads
    1,000 streams without becoming the thing being measured.
    """

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request = request
        self.done = done
        self.loop = asyncio.get_running_loop()
        self.stamps: list[float] = []
        self.status_ok: bool | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        if self.status_ok is None:
            self.status_ok = data.startswith(b"HTTP/1.1 200")
        # Events end with a blank line; carry one byte in case "\n\n" straddles reads.
        n = (self.tail + data).count(b"\n\n")
        self.tail = data[-1:]
        self.stamps.extend([now] * n)
        if b"[DONE]" in data and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _raw_stream(
    port: int, request: bytes, tokens: int, delay: float, out: dict, conns: list
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    done = loop.create_future()
    t0 = loop.time()
    try:
        transport, proto = await loop.create_connection(
            lambda: _SseCounter(request, done), "127.0.0.1", port
        )
    except OSError:
        out["errors"] += 1
        return
    conns.append(transport)
    await done
    transport.close()
    if not proto.status_ok:
        out["errors"] += 1
        return
    _record(out, t0, proto.stamps, tokens)


async def _aiohttp_stream(session, url: str, body: bytes, tokens: int, delay: float, out: dict):
    import aiohttp

    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    t0 = loop.time()
    stamps: list[float] = []
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status != 200:
                out["errors"] += 1
                return
            async for data in resp.content.iter_any():
                now = loop.time()
                stamps.extend([now] * data.count(b"\n\n"))
    except (TimeoutError, aiohttp.ClientError):
        out["errors"] += 1
        return
    _record(out, t0, stamps, tokens)


async def _client_main(
    kind: str,
    port: int,
    n: int,
    offset: int,
    total: int,
    tokens: int,
    ramp: float,
    start_at: float,
) -> dict:
    body = json.dumps(
        {"model": "sim-model", "prompt": "benchmark", "max_tokens": tokens, "stream": True}
    ).encode()
    out = _new_result()
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    # Stream i starts at ramp * i / total: arrivals spread evenly, as real traffic is.
    delays = [ramp * (offset + i) / total for i in range(n)]
    if kind == "raw":
        request = (
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        conns: list = []
        await asyncio.gather(*(_raw_stream(port, request, tokens, d, out, conns) for d in delays))
        return out
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/completions"
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(_aiohttp_stream(session, url, body, tokens, d, out) for d in delays))
    return out


def _client_proc(kind: str, port: int, n: int, offset: int, total: int, tokens: int,
                 ramp: float, start_at: float, queue) -> None:  # fmt: skip
    # loop.time() is time.monotonic(): one clock for every process on the machine.
    cpu0 = time.process_time()
    out = asyncio.run(_client_main(kind, port, n, offset, total, tokens, ramp, start_at))
    out["cpu_s"] = time.process_time() - cpu0
    queue.put(out)


# ---------------------------------------------------------------------------
# parent


def scrape_running(base: str) -> float:
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=2) as resp:
            m = RUNNING_RE.search(resp.read().decode())
            return float(m.group(1)) if m else 0.0
    except OSError:
        return 0.0


def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logdir = Path(tempfile.mkdtemp(prefix="sim-bench-"))
    sim = ManagedProcess(
        "sim-vllm",
        spotrelay_argv(
            "sim", "vllm", "--host", "127.0.0.1", "--port", str(port),
            "--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms),
            "--max-num-seqs", str(max(args.streams, 1)), "--log-level", "warning",
        ),
        log_path=logdir / "sim.log",
    ).start()  # fmt: skip
    try:
        sim.wait_ready(lambda: http_ok(base + "/health"), timeout=30)
        proc = psutil.Process(sim.pid)
        cpu0 = proc.cpu_times()
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()
        start_at = time.time() + 1.5  # let every client process start first
        share = [args.streams // args.clients] * args.clients
        share[0] += args.streams - sum(share)
        offsets = [sum(share[:i]) for i in range(len(share))]
        clients = [
            ctx.Process(
                target=_client_proc,
                args=(
                    args.client,
                    port,
                    n,
                    off,
                    args.streams,
                    args.tokens,
                    args.ramp_s,
                    start_at,
                    queue,
                ),
            )
            for n, off in zip(share, offsets, strict=True)
        ]
        for c in clients:
            c.start()
        peak = 0.0
        results = []
        while len(results) < len(clients):
            peak = max(peak, scrape_running(base))
            with contextlib.suppress(queue_mod.Empty):
                results.append(queue.get(timeout=0.25))
        for c in clients:
            c.join(10)
        cpu1 = proc.cpu_times()
        with urllib.request.urlopen(base + "/_control/stats", timeout=5) as resp:
            lateness = json.load(resp)["engine"]["token_lateness"]
    finally:
        sim.stop()
    pairs = [p for r in results for p in r["gaps"]]
    firsts = [t for r in results for t in r["firsts"]]
    lasts = [t for r in results for t in r["lasts"]]
    ttft = [t for r in results for t in r["ttft"]]
    tokens = sum(r["tokens"] for r in results)
    first, last = min(firsts), max(lasts)
    # Steady state: every stream has started and none has finished.
    steady_from, steady_to = max(firsts), min(lasts)
    gaps = [g for t, g in pairs if steady_from <= t and t + g <= steady_to]
    all_gaps = [g for _, g in pairs]
    itl = args.itl_ms / 1000.0
    extra = [max(0.0, g - itl) for g in gaps]
    span = max(1e-9, last - first)
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    cpu_sys = cpu1.system - cpu0.system
    ms = 1000.0
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_avg_1m_before": round(load_before, 2),
        "streams": args.streams,
        "clients": args.clients,
        "client": args.client,
        "tokens_per_stream": args.tokens,
        "itl_ms": args.itl_ms,
        "ttft_ms": args.ttft_ms,
        "peak_running": int(peak),
        "streams_ok": sum(r["ok"] for r in results),
        "streams_short": sum(r["short"] for r in results),
        "streams_error": sum(r["errors"] for r in results),
        "tokens_per_s": round(tokens / span, 1),
        "gap_p50_ms": round(percentile(gaps, 50) * ms, 2),
        "gap_p99_ms": round(percentile(gaps, 99) * ms, 2),
        "gap_max_ms": round(max(gaps, default=float("nan")) * ms, 2),
        "extra_p50_ms": round(percentile(extra, 50) * ms, 2),
        "extra_p99_ms": round(percentile(extra, 99) * ms, 2),
        "gap_mean_ms": round(statistics.fmean(gaps) * ms, 2) if gaps else None,
        "steady_s": round(max(0.0, steady_to - steady_from), 2),
        "steady_gaps": len(gaps),
        "all_gap_p99_ms": round(percentile(all_gaps, 99) * ms, 2),
        "all_gap_max_ms": round(max(all_gaps, default=float("nan")) * ms, 2),
        "ttft_p50_ms": round(percentile(ttft, 50) * ms, 1),
        "ttft_p99_ms": round(percentile(ttft, 99) * ms, 1),
        "sim_token_lateness": lateness,
        "sim_cpu_percent": round(100.0 * cpu / span, 1),
        "sim_cpu_kernel_percent": round(100.0 * cpu_sys / span, 1),
        "client_cpu_percent": [round(100.0 * r["cpu_s"] / span, 1) for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams (1000)")
    ap.add_argument("--tokens", type=int, default=200, help="tokens per stream (200)")
    ap.add_argument("--itl-ms", type=float, default=50.0, help="simulator --itl-ms (50)")
    ap.add_argument("--ttft-ms", type=float, default=50.0, help="simulator --ttft-ms (50)")
    ap.add_argument("--clients", type=int, default=2, help="client processes (2)")
    ap.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="raw: a minimal asyncio HTTP client (default; ~10x cheaper per event); "
        "aiohttp: the aiohttp client (costs ~40 us per event, itself the bottleneck)",
    )
    ap.add_argument(
        "--ramp-s", type=float, default=1.0, help="spread stream starts over this long (1.0)"
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"machine            {res['machine']} (1-min load before: {res['load_avg_1m_before']})")
    print(
        f"setting            itl {res['itl_ms']} ms, ttft {res['ttft_ms']} ms, "
        f"{res['tokens_per_stream']} tokens/stream, {res['clients']} {res['client']} client "
        "processes"
    )
    print(
        f"concurrency held   {res['peak_running']} running (peak), {res['streams_ok']}/"
        f"{res['streams']} streams complete, {res['streams_short']} short, "
        f"{res['streams_error']} errors"
    )
    print(f"tokens/s           {res['tokens_per_s']:.0f}")
    print(
        f"inter-token gap    p50 {res['gap_p50_ms']} ms  p99 {res['gap_p99_ms']} ms  "
        f"max {res['gap_max_ms']} ms  (setting {res['itl_ms']} ms)"
    )
    print(
        f"extra delay        p50 {res['extra_p50_ms']} ms  p99 {res['extra_p99_ms']} ms  "
        f"(steady state: {res['steady_s']} s with all streams open, {res['steady_gaps']} gaps)"
    )
    print(f"incl. ramp/drain   gap p99 {res['all_gap_p99_ms']} ms  max {res['all_gap_max_ms']} ms")
    late = res["sim_token_lateness"]
    print(
        f"simulator's view   tokens written late by p50 {late['p50_ms']} ms, "
        f"p99 {late['p99_ms']} ms, max {late['max_ms']} ms ({late['steps']} steps)"
    )
    print(f"TTFT               p50 {res['ttft_p50_ms']} ms  p99 {res['ttft_p99_ms']} ms")
    print(
        f"CPU (% of a core)  simulator {res['sim_cpu_percent']} "
        f"({res['sim_cpu_kernel_percent']} in the kernel), clients "
        + ", ".join(str(c) for c in res["client_cpu_percent"])
        + " (over the whole run)"
    )
    if not res["steady_gaps"]:  # every stream was still starting or already ending
        print("result             NOT MEASURED (no steady state: use more --tokens)")
        return 0
    ok = res["streams_ok"] == res["streams"] and res["extra_p99_ms"] <= 5.0
    print("result             " + ("PASS" if ok else "FAIL") + " (p99 extra delay <= 5 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
