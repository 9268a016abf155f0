#!/usr/bin/env python3
"""Benchmark: what does the router cost, next to no proxy at all and next to HAProxy?

In one run, against the same ``spotrelay sim vllm`` engine, three paths side by side:

* ``direct``  — client → engine;
* ``router``  — client → ``spotrelay router`` (gunicorn, one gevent worker) → engine;
  with ``--workers`` / ``--backend`` (comma lists) one router per combination, e.g.
  ``router-memory-1w``, ``router-redis-1w``, ``router-redis-2w`` (the ``redis`` ones
  share a local ``redis-server`` registry; ``memory`` only runs with 1 worker);
* ``haproxy`` — client → HAProxy (Debian's, ``mode http``, one thread) → engine;
  skipped with a message when ``haproxy`` is not installed.

Measured:

1. added latency of a non-streaming request, p50 and p99, at concurrency 1
   (engine set to answer at once: ttft 0, itl 0, one token);
2. maximum non-streaming requests/s (32 connections);
3. concurrent streams held with the inter-token delay added ≤ 5 ms at p99:
   for each stream count, the p99 gap between tokens through the path minus the
   p99 gap direct at the same count;
4. with a ``redis`` backend: how fast a drain at one router reaches every worker
   of another (two routers, two workers each, one Redis), p50/p99 over
   ``--fanout-trials`` drains.

The engine behind 1 and 2 is, by default (``--engine static``), HAProxy replaying the
simulator's own recorded answers (``bench/static_engine.py`` says why: the Python
simulator would take the cores the router needs); ``--engine sim`` puts the simulator
itself there. Each throughput run records the cores used by the path, the engine and
the load generator. Streams (3) always run on the simulator.

Load generators: ``wrk`` (Debian package) for 1 and 2 when installed, else an
aiohttp closed-loop client in separate processes; streams are read by a raw
asyncio client in separate processes that timestamps each SSE event on arrival.

All processes share this machine's cores (see ``--json`` for the CPU count):
the figures are relative, not absolute.

Usage::

    .venv/bin/python bench/router_bench.py                     # defaults below
    .venv/bin/python bench/router_bench.py --streams 250,500,1000,1500 --itl-ms 50
    .venv/bin/python bench/router_bench.py --quick --json
    .venv/bin/python bench/router_bench.py --workers 1,2 --backend memory,redis
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
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from static_engine import HAPROXY_HEAD, record_answers
from static_engine import haproxy_config as static_engine_config

from spotrelay.core.control_api import NodeEntry
from spotrelay.core.control_client import ControlClient
from spotrelay.core.protocol import EngineInfo, NodeReport
from spotrelay.sim.loopback import free_port, http_ok
from spotrelay.sim.processes import ManagedProcess, ProcessGroup, spotrelay_argv

MODEL = "sim-model"
TOKEN = "bench-token"
HOST = "127.0.0.1"
ADDED_GAP_TARGET_MS = 5.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- processes --------------------------------------------------------------------------------


# port -> pids of the processes that do the work behind it (a router's workers, not its master)
WORKERS: dict[int, list[int]] = {}


def start(procs: ProcessGroup, name: str, argv: list[str], ready_url: str, logdir: Path):
    proc = procs.start(ManagedProcess(name, argv, log_path=logdir / f"{name}.log"))
    proc.wait_ready(lambda: http_ok(ready_url), timeout=30)
    port = int(ready_url.rsplit(":", 1)[1].split("/", 1)[0])
    children = psutil.Process(proc.pid).children()
    WORKERS[port] = [c.pid for c in children] or [proc.pid]
    return proc


def cpu_seconds(port: int) -> float:
    """CPU time (user + system) used so far by the processes serving ``port``."""
    total = 0.0
    for pid in WORKERS[port]:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def start_sim(procs, logdir, name: str, ttft_ms: float, itl_ms: float, *extra: str) -> int:
    port = free_port()
    argv = spotrelay_argv(
        "sim", "vllm", "--host", HOST, "--port", str(port), "--model", MODEL,
        "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
        "--max-num-seqs", "100000", "--max-model-len", "100000", "--log-level", "warning",
        *extra,
    )  # fmt: skip
    start(procs, name, argv, f"http://{HOST}:{port}/health", logdir)
    return port


def start_router(
    procs,
    logdir,
    engine_ports: list[int],
    *,
    name: str = "router",
    workers: int = 1,
    redis_url: str | None = None,
    redis_prefix: str | None = None,
    routing: dict | None = None,
    expect_nodes: int | None = None,
    engine: EngineInfo | None = None,
) -> int:
    """A router with ``workers`` workers; a shared registry in ``redis_url`` if given.

    Each router gets its own key prefix (its own fleet) unless ``redis_prefix`` is given.
    ``routing``: its ``routing`` section; ``engine``: the engine block the nodes register with;
    ``expect_nodes``: wait until every worker sees that many (default: those it registers).
    """
    port = free_port()
    registry: dict = {"ttl_s": 86400}  # registered once, no heartbeats needed
    if redis_url:
        prefix = redis_prefix or f"bench-{port}"
        registry.update(backend="redis", redis_url=redis_url, redis_key_prefix=prefix)
    cfg = logdir / f"{name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "server": {
                    "workers": workers,
                    "access_log": False,
                    "worker_connections": 20000,
                    "upstream_pool_size": 4096,
                    "graceful_timeout_s": 1,
                    "control_port": free_port(),
                    "control_on_main_port": True,  # registrations and views use one port
                    "max_connections_per_ip": 0,  # the load comes from one address
                },
                "auth": {"node_token": TOKEN},
                "registry": registry,
                "routing": routing or {},
            }
        )
    )
    argv = spotrelay_argv(
        "router", "--config", str(cfg), "--host", HOST, "--port", str(port),
        "--log-level", "warning",
    )  # fmt: skip
    start(procs, name, argv, f"http://{HOST}:{port}/healthz", logdir)
    if redis_url:
        wait_shared(port)
    control = control_client(port)
    for i, engine_port in enumerate(engine_ports):
        url = f"http://{HOST}:{engine_port}"
        control.put_node(f"engine-{i}", NodeReport(url, (MODEL,), engine=engine or EngineInfo()))
    want = len(engine_ports) if expect_nodes is None else expect_nodes
    if workers > 1 or want > len(engine_ports):  # every worker knows the engines first
        wait_every_worker(port, workers, lambda nodes: len(nodes) >= want)
    return port


def control_client(port: int) -> ControlClient:
    """The router's control plane; urllib opens a fresh connection per call (any worker)."""
    return ControlClient(f"http://{HOST}:{port}", TOKEN)


def nodes_view(port: int) -> tuple[str, str, dict[str, NodeEntry]]:
    """A fresh connection's GET /nodes: (worker, registry state, nodes by id)."""
    view = control_client(port).nodes()
    nodes = {n.id: n for n in view.nodes}
    return view.answered_by or "", view.registry or "", nodes


def wait_shared(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while nodes_view(port)[1] != "redis":
        if time.monotonic() > deadline:
            raise TimeoutError(f"router on {port} never reached Redis")
        time.sleep(0.05)


def wait_every_worker(port: int, workers: int, check, timeout: float = 30) -> float:
    """Seconds until ``workers`` distinct workers answered with a view passing ``check``."""
    t0 = time.monotonic()
    done: set[str] = set()
    while len(done) < workers:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {len(done)} of {workers} workers on {port} agreed")
        worker, _state, nodes = nodes_view(port)
        if check(nodes):
            done.add(worker)
    return time.monotonic() - t0


def fanout_run(procs, logdir, redis_url: str, engine: int, trials: int) -> dict:
    """Drain at router A -> excluded on every worker of router B (2 x 2 workers, one Redis)."""
    sub = logdir / "fanout"
    sub.mkdir(exist_ok=True)
    shared = {"workers": 2, "redis_url": redis_url, "redis_prefix": "bench-fanout"}
    a = start_router(procs, sub, [], name="fanout-a", **shared)
    b = start_router(procs, sub, [], name="fanout-b", **shared)
    times = []
    control = control_client(a)
    for i in range(trials):
        node = f"fan-{i}"
        control.put_node(node, NodeReport(f"http://{HOST}:{engine}", (MODEL,)))
        wait_every_worker(b, 2, lambda nodes, n=node: n in nodes)
        t0 = time.monotonic()
        control.drain_node(node)
        wait_every_worker(b, 2, lambda nodes, n=node: n in nodes and nodes[n].state == "draining")
        times.append((time.monotonic() - t0) * 1000)
    return {
        "trials": trials,
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times) if times else float("nan"),
    }


def haproxy_config(port: int, engine: int) -> str:
    return f"""{HAPROXY_HEAD}
frontend bench
    bind {HOST}:{port}
    default_backend engine
backend engine
    server e0 {HOST}:{engine} maxconn 8000
"""


def start_haproxy(procs, logdir, name: str, config) -> int | None:
    """An HAProxy named ``name`` running ``config(port)``; None when it is not installed."""
    binary = shutil.which("haproxy")
    if not binary:
        return None
    port = free_port()
    cfg = logdir / f"{name}.cfg"
    cfg.write_text(config(port))
    start(procs, name, [binary, "-db", "-f", str(cfg)], f"http://{HOST}:{port}/health", logdir)
    return port


def start_fast_engine(procs, logdir, kind: str, say) -> tuple[int, str]:
    """The engine for latency and req/s, answering at once: (port, what it is).

    ``static`` records the simulator's answers and has HAProxy replay them
    (``bench/static_engine.py``); without ``haproxy`` it falls back to the simulator.
    """
    sim = start_sim(procs, logdir, "engine-fast", 0, 0)
    if kind == "static" and shutil.which("haproxy"):
        answers = record_answers(f"http://{HOST}:{sim}", MODEL, logdir / "answers")
        port = start_haproxy(
            procs, logdir, "static-engine", lambda p: static_engine_config(HOST, p, answers)
        )
        return port, "static: HAProxy replaying the simulator's recorded answers"
    if kind == "static":
        say("haproxy is not installed: the simulator answers the throughput runs")
    return sim, "spotrelay sim vllm (ttft 0, itl 0)"


# -- non-streaming load: wrk, or an aiohttp fallback ------------------------------------------

WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{{"model": "{MODEL}", "prompt": "hi", "max_tokens": 1}}'
wrk.headers["Content-Type"] = "application/json"
"""

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.match(r"([0-9.]+)(us|ms|s)$", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk_run(port: int, connections: int, threads: int, seconds: float, script: Path) -> dict:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
         "-s", str(script), f"http://{HOST}:{port}/v1/completions"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "rps": rps,
        "p50_ms": _ms(lat.get("50", "nan")),
        "p99_ms": _ms(lat.get("99", "nan")),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def _aiohttp_worker(
    port: int,
    connections: int,
    seconds: float,
    queue,
    body: bytes | None = None,
    path: str = "/v1/completions",
) -> None:
    import aiohttp

    async def main() -> dict:
        data = body or json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 1}).encode()
        url = f"http://{HOST}:{port}{path}"
        lat: list[float] = []
        bad = 0
        stop = time.monotonic() + seconds
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def loop() -> None:
                nonlocal bad
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    async with session.post(
                        url, data=data, headers={"Content-Type": "application/json"}
                    ) as resp:
                        await resp.read()
                        bad += resp.status != 200
                    lat.append((time.perf_counter() - t0) * 1000)

            await asyncio.gather(*(loop() for _ in range(connections)))
        return {"lat": lat, "bad": bad}

    queue.put(asyncio.run(main()))


def aiohttp_run(
    port: int,
    connections: int,
    procs: int,
    seconds: float,
    body: bytes | None = None,
    path: str = "/v1/completions",
) -> dict:
    """Closed-loop POSTs of ``body`` (default: a one-token completion) from ``procs`` processes."""
    queue: mp.Queue = mp.Queue()
    per = max(1, connections // procs)
    args = (port, per, seconds, queue, body, path)
    workers = [mp.Process(target=_aiohttp_worker, args=args) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for w in workers:
        w.join()
    lat = [x for r in results for x in r["lat"]]
    return {
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "non_2xx": sum(r["bad"] for r in results),
        "socket_errors": "",
    }


def children_cpu_seconds() -> float:
    """CPU time of this script's finished children: wrk, or the aiohttp load processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load(port: int, connections: int, seconds: float, script: Path, engine: int) -> dict:
    """One load run against ``port``; also the cores that path, engine and load generator used.

    The cores are CPU seconds over wall seconds: on this box everything shares
    the same cores, so they say who took the machine during the run.
    """
    before = (cpu_seconds(port), cpu_seconds(engine), children_cpu_seconds())
    started = time.monotonic()
    if shutil.which("wrk"):
        result = wrk_run(port, connections, min(2, connections), seconds, script)
    else:
        result = aiohttp_run(port, connections, min(2, connections), seconds)
    wall = time.monotonic() - started
    after = (cpu_seconds(port), cpu_seconds(engine), children_cpu_seconds())
    requests = result["rps"] * seconds
    used = [a - b for a, b in zip(after, before, strict=True)]
    result["cpu_us_per_request"] = used[0] / max(1, requests) * 1e6
    result["cores"] = {
        "path": used[0] / wall if port != engine else 0.0,
        "engine": used[1] / wall,
        "load_generator": used[2] / wall,
    }
    return result


# -- streams ----------------------------------------------------------------------------------


class _Reader(asyncio.Protocol):
    """Sends one streaming request; timestamps every SSE event as it arrives."""

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request, self.done = request, done
        self.loop = asyncio.get_running_loop()
        self.stamps: list[float] = []
        self.ok: bool | None = None
        self.tail = b""

    def connection_made(self, transport) -> None:
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        if self.ok is None:
            self.ok = data.startswith(b"HTTP/1.1 200")
        n = (self.tail + data).count(b"\n\n")
        self.tail = data[-1:]
        self.stamps.extend([now] * n)
        if b"[DONE]" in data and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _stream_worker(port: int, count: int, tokens: int, ramp_s: float, start_at: float, queue):
    async def one(request: bytes, delay: float, out: dict) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        done = loop.create_future()
        try:
            transport, proto = await loop.create_connection(
                lambda: _Reader(request, done), HOST, port
            )
        except OSError:
            out["errors"] += 1
            return
        await done
        transport.close()
        content = proto.stamps[:tokens]
        if not proto.ok or len(content) < tokens:
            out["errors"] += 1
            return
        out["ok"] += 1
        out["gaps"].extend((b - a) * 1000 for a, b in itertools.pairwise(content))

    async def main() -> dict:
        body = json.dumps(
            {"model": MODEL, "prompt": "bench", "max_tokens": tokens, "stream": True}
        ).encode()
        request = (
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        out = {"ok": 0, "errors": 0, "gaps": []}
        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(one(request, ramp_s * i / count, out) for i in range(count)))
        return out

    queue.put(asyncio.run(main()))


def streams_run(port: int, streams: int, tokens: int, clients: int, ramp_s: float) -> dict:
    queue: mp.Queue = mp.Queue()
    start_at = time.time() + 0.5
    shares = [streams // clients + (1 if i < streams % clients else 0) for i in range(clients)]
    workers = [
        mp.Process(target=_stream_worker, args=(port, n, tokens, ramp_s, start_at, queue))
        for n in shares
        if n
    ]
    before = cpu_seconds(port)
    for w in workers:
        w.start()
    results = [queue.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    used = cpu_seconds(port) - before
    gaps = [g for r in results for g in r["gaps"]]
    events = sum(r["ok"] for r in results) * tokens
    return {
        "cpu_us_per_event": used / max(1, events) * 1e6,
        "streams": streams,
        "ok": sum(r["ok"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "gap_p50_ms": percentile(gaps, 50),
        "gap_p99_ms": percentile(gaps, 99),
        "gap_max_ms": max(gaps) if gaps else float("nan"),
    }


# -- the run ----------------------------------------------------------------------------------


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # NaN shows as "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="for max req/s")
    parser.add_argument("--streams", help="stream counts to try (default 100,250,500,1000)")
    parser.add_argument("--tokens", type=int, help="tokens per stream (default 100)")
    parser.add_argument("--itl-ms", type=float, default=50, help="engine inter-token latency")
    parser.add_argument("--ttft-ms", type=float, default=50, help="engine time to first token")
    parser.add_argument("--ramp-s", type=float, default=2.0, help="spread stream starts")
    parser.add_argument("--clients", type=int, default=3, help="stream client processes")
    parser.add_argument("--quick", action="store_true", help="short runs, fewer stream counts")
    parser.add_argument("--no-haproxy", action="store_true", help="skip the HAProxy reference")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--logdir", help="keep process logs here (default: a temp dir)")
    parser.add_argument(
        "--workers", default="1", help="router worker counts, comma-separated (e.g. 1,2)"
    )
    parser.add_argument(
        "--backend", default="memory", help="registry backends, comma-separated: memory,redis"
    )
    parser.add_argument(
        "--redis", help="redis:// URL for the redis backend (default: start a local redis-server)"
    )
    parser.add_argument(
        "--engine",
        choices=("static", "sim"),
        default="static",
        help="engine for latency and req/s: HAProxy replaying the simulator (default), or it",
    )
    parser.add_argument("--fanout-trials", type=int, default=50, help="drains timed (redis)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="throughput rounds, paths interleaved; best kept"
    )
    args = parser.parse_args(argv)
    variants = router_variants(args.backend, args.workers)
    if not variants:
        parser.error("--backend memory runs 1 worker only: add 1 to --workers or use redis")
    if args.quick:
        args.seconds = 4
    args.streams = args.streams or ("250,1000" if args.quick else "100,250,500,1000")
    args.tokens = args.tokens or (60 if args.quick else 100)
    stream_counts = [int(s) for s in args.streams.split(",") if s]

    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="router-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    script = logdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": os.getloadavg(),
        },
        "load_generator": "wrk" if shutil.which("wrk") else "aiohttp",
        "settings": vars(args),
    }
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    with ProcessGroup() as procs:
        fast, report["engine"] = start_fast_engine(procs, logdir, args.engine, say)
        slow = start_sim(procs, logdir, "engine-streams", args.ttft_ms, args.itl_ms)
        redis_url = None
        if any(backend == "redis" for _name, backend, _w in variants):
            redis_url = args.redis or start_redis(procs, logdir)
        paths = {"direct": fast}
        stream_paths = {"direct": slow}
        for name, backend, workers in variants:
            url = redis_url if backend == "redis" else None
            paths[name] = start_router(
                procs, logdir, [fast], name=name, workers=workers, redis_url=url
            )
            stream_paths[name] = start_router_for_streams(procs, logdir, slow, name, workers, url)
        hap = hap_streams = None
        if not args.no_haproxy:  # /v1/models is proxied like anything else: the engine answers
            hap = start_haproxy(procs, logdir, "haproxy", lambda p: haproxy_config(p, fast))
        if hap is not None:
            hap_streams = start_haproxy(
                procs, logdir, "haproxy-streams", lambda p: haproxy_config(p, slow)
            )
        elif not args.no_haproxy:
            say("haproxy is not installed (apt-get install haproxy): skipping the C reference")
        if hap is not None:
            paths["haproxy"] = hap
            stream_paths["haproxy"] = hap_streams

        say(f"warming up ({report['load_generator']}) ...")
        for port in paths.values():
            load(port, 4, 1, script, fast)

        say("1/3 added latency, non-streaming, concurrency 1")
        report["latency"] = {
            name: load(port, 1, args.seconds, script, fast) for name, port in paths.items()
        }
        say("2/3 max non-streaming req/s")
        report["throughput"] = best_throughput(paths, args, script, fast)
        say(f"3/3 concurrent streams (itl {args.itl_ms:g} ms, {args.tokens} tokens each)")
        report["streams"] = {name: [] for name in stream_paths}
        for count in stream_counts:
            for name, port in stream_paths.items():
                result = streams_run(port, count, args.tokens, args.clients, args.ramp_s)
                report["streams"][name].append(result)
                say(
                    f"   {name:8s} {count:5d} streams: ok {result['ok']}, errors "
                    f"{result['errors']}, gap p50 {fmt(result['gap_p50_ms'])} ms, "
                    f"p99 {fmt(result['gap_p99_ms'])} ms, {fmt(result['cpu_us_per_event'], 0)} "
                    "us CPU per event"
                )
        if redis_url is not None and args.fanout_trials:
            say(f"4/4 shared-registry fan-out: drain at A -> every worker of B, "
                f"{args.fanout_trials} trials")  # fmt: skip
            report["fanout"] = fanout_run(procs, logdir, redis_url, fast, args.fanout_trials)
    report["machine"]["loadavg_after"] = os.getloadavg()

    summarise(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def best_throughput(paths: dict[str, int], args, script: Path, engine: int) -> dict[str, dict]:
    """Max req/s per path: the best of ``--rounds`` rounds, paths interleaved in each.

    On a shared machine the load from others comes and goes; interleaving the
    paths and keeping each one's best round compares them at similar load.
    """
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, port in paths.items():
            result = load(port, args.connections, args.seconds, script, engine)
            if name not in best or result["rps"] > best[name]["rps"]:
                best[name] = result
    return best


def router_variants(backends: str, workers: str) -> list[tuple[str, str, int]]:
    """(path name, backend, workers) for each valid combination; memory runs 1 worker only."""
    combos = [
        (b.strip(), int(w))
        for b in backends.split(",")
        if b.strip()
        for w in workers.split(",")
        if w.strip()
    ]
    combos = [(b, w) for b, w in combos if b == "redis" or w == 1]
    if combos == [("memory", 1)]:
        return [("router", "memory", 1)]
    return [(f"router-{b}-{w}w", b, w) for b, w in combos]


def start_redis(procs, logdir) -> str:
    from spotrelay.sim.redis_local import start_local_redis

    return start_local_redis(procs, logdir).url


def start_router_for_streams(
    procs, logdir, engine: int, name: str = "router", workers: int = 1, redis_url=None
) -> int:
    """A second router (own process) in front of the streaming engine."""
    sub = logdir / "streams"
    sub.mkdir(exist_ok=True)
    return start_router(procs, sub, [engine], name=name, workers=workers, redis_url=redis_url)


def summarise(report: dict) -> None:
    lat, thr, streams = report["latency"], report["throughput"], report["streams"]
    direct = lat["direct"]
    summary: dict = {}
    for name in lat:
        if name == "direct":
            continue
        held = 0
        for mine, base in zip(streams[name], streams["direct"], strict=True):
            added = mine["gap_p99_ms"] - base["gap_p99_ms"]
            mine["added_p99_ms"] = added
            if mine["errors"] == 0 and added <= ADDED_GAP_TARGET_MS:
                held = max(held, mine["streams"])
        per_event = [r["cpu_us_per_event"] for r in streams[name] if r["errors"] == 0]
        summary[name] = {
            "cpu_us_per_request": thr[name]["cpu_us_per_request"],
            "cpu_us_per_stream_event": min(per_event) if per_event else float("nan"),
            "added_p50_ms": lat[name]["p50_ms"] - direct["p50_ms"],
            "added_p99_ms": lat[name]["p99_ms"] - direct["p99_ms"],
            "max_rps": thr[name]["rps"],
            "rps_vs_direct": thr[name]["rps"] / thr["direct"]["rps"],
            "streams_held_within_5ms": held,
        }
    first = next(name for name in summary if name.startswith("router"))
    if "haproxy" in summary:
        r, h = summary[first], summary["haproxy"]
        summary["router_vs_haproxy"] = {
            "added_p50_ratio": r["added_p50_ms"] / h["added_p50_ms"] if h["added_p50_ms"] else None,
            "rps_ratio": r["max_rps"] / h["max_rps"],
        }
    summary["targets"] = {
        "router_added_p50_le_1ms": summary[first]["added_p50_ms"] <= 1.0,
        "router_streams_ge_1000": summary[first]["streams_held_within_5ms"] >= 1000,
    }
    mem, r1, r2 = (summary.get(f"router-{v}") for v in ("memory-1w", "redis-1w", "redis-2w"))
    if mem and r1:
        summary["targets"]["redis_1w_within_5pct_of_memory"] = (
            r1["max_rps"] >= 0.95 * mem["max_rps"]
        )
    if r1 and r2:
        summary["workers_scaling"] = r2["max_rps"] / r1["max_rps"]
        summary["targets"]["redis_2w_ge_1.4x_1w"] = summary["workers_scaling"] >= 1.4
    if "fanout" in report:
        summary["targets"]["fanout_p99_le_1.5s"] = report["fanout"]["p99_ms"] <= 1500
    report["summary"] = summary


def print_report(report: dict) -> None:
    lat, thr, summary = report["latency"], report["throughput"], report["summary"]
    print()
    print(f"machine: {report['machine']['cpus']} CPUs, load generator {report['load_generator']}")
    print(f"engine for latency and req/s: {report['engine']}")
    print()
    print("non-streaming, concurrency 1 (latency) and 32 connections (throughput)")
    print(f"{'path':17s} {'p50 ms':>8s} {'p99 ms':>8s} {'+p50 ms':>8s} {'+p99 ms':>8s} "
          f"{'req/s':>9s} {'vs direct':>9s}")  # fmt: skip
    for name in lat:
        added50 = lat[name]["p50_ms"] - lat["direct"]["p50_ms"]
        added99 = lat[name]["p99_ms"] - lat["direct"]["p99_ms"]
        ratio = thr[name]["rps"] / thr["direct"]["rps"]
        print(
            f"{name:17s} {fmt(lat[name]['p50_ms']):>8s} {fmt(lat[name]['p99_ms']):>8s} "
            f"{fmt(added50):>8s} {fmt(added99):>8s} {thr[name]['rps']:9.0f} {ratio:9.2f}"
        )
    print()
    print("cores used during the max req/s run (CPU seconds / wall seconds)")
    print(f"{'path':17s} {'path':>8s} {'engine':>8s} {'load gen':>8s} {'total':>8s}")
    for name, row in thr.items():
        c = row["cores"]
        total = c["path"] + c["engine"] + c["load_generator"]
        print(
            f"{name:17s} {c['path']:8.2f} {c['engine']:8.2f} {c['load_generator']:8.2f} "
            f"{total:8.2f}"
        )
    if "workers_scaling" in summary:
        print(f"req/s, 2 workers / 1 worker (redis): {summary['workers_scaling']:.2f}x")
    print()
    print("streams: inter-token gap p99 (ms), and added over direct at the same count")
    counts = [r["streams"] for r in report["streams"]["direct"]]
    header = f"{'path':17s}" + "".join(f"{c:>16d}" for c in counts)
    print(header)
    for name, rows in report["streams"].items():
        cells = []
        for row in rows:
            added = row.get("added_p99_ms")
            extra = f" (+{fmt(added, 1)})" if added is not None else ""
            errs = f" E{row['errors']}" if row["errors"] else ""
            cells.append(f"{fmt(row['gap_p99_ms'], 1)}{extra}{errs}")
        print(f"{name:17s}" + "".join(f"{c:>16s}" for c in cells))
    print()
    for name in [n for n in summary if n.startswith("router-") or n in ("router", "haproxy")]:
        if name != "router_vs_haproxy":
            s = summary[name]
            print(
                f"{name}: added p50 {fmt(s['added_p50_ms'])} ms, p99 {fmt(s['added_p99_ms'])} ms; "
                f"max {s['max_rps']:.0f} req/s ({s['rps_vs_direct']:.2f}x direct); "
                f"streams held within +{ADDED_GAP_TARGET_MS:g} ms p99: "
                f"{s['streams_held_within_5ms']}; CPU {fmt(s['cpu_us_per_request'], 0)} us per "
                f"request, {fmt(s['cpu_us_per_stream_event'], 0)} us per stream event"
            )
    if "fanout" in report:
        f = report["fanout"]
        print(
            f"shared-registry fan-out (drain at A -> every worker of B): p50 "
            f"{fmt(f['p50_ms'], 1)} ms, p99 {fmt(f['p99_ms'], 1)} ms, max "
            f"{fmt(f['max_ms'], 1)} ms over {f['trials']} drains"
        )
    if "router_vs_haproxy" in summary:
        rv = summary["router_vs_haproxy"]
        ratio = rv["added_p50_ratio"]
        print(
            f"router vs haproxy: added p50 x{fmt(ratio) if ratio else '-'}, "
            f"req/s x{rv['rps_ratio']:.2f}"
        )
    print("targets: " + "; ".join(
        f"{key}: {'met' if ok else 'MISSED'}" for key, ok in summary["targets"].items()
    ))  # fmt: skip
    machine = report["machine"]
    print(f"load average before/after: {machine['loadavg_before']} / {machine['loadavg_after']}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
