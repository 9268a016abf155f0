#!/usr/bin/env python3
"""Benchmark: what does assembling non-streaming answers from streams cost?

``routing.assemble_non_streaming`` sends a non-streaming completions or chat
request to the engine as a stream and builds the JSON answer in the router
(docs/router.md, "Non-streaming answers assembled from streams"). This
measures its price against forwarding the request as it came, side by side
in one run, against the same ``spotrelay sim vllm`` engine:

* ``direct``   — client → engine, non-streaming (the engine's own cost);
* ``forward``  — client → router (assembly off) → engine, non-streaming;
* ``assemble`` — client → router (assembly on for kind ``vllm``) → engine as a
  stream → one JSON answer;
* ``stream``   — client → router → engine, a streaming request read to its end
  (what the router pays per streamed token anyway).

For each answer length (``--tokens``, engine ``--itl-ms`` between tokens,
default 0: the router's cost is not hidden behind the engine's pace) it
prints the latency at concurrency 1 (p50, p99), requests/s with
``--connections`` closed-loop clients, and the router's CPU per request
(its worker process, user + system), then the ratios ``assemble / forward``.

Usage::

    .venv/bin/python bench/assemble_bench.py
    .venv/bin/python bench/assemble_bench.py --tokens 16,256 --seconds 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from router_bench import MODEL, aiohttp_run, cpu_seconds, start_router, start_sim

from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE, EngineInfo
from spotrelay.sim.processes import ProcessGroup

VLLM = EngineInfo("vllm", "bench", frozenset({CAP_CONTINUE_FINAL_MESSAGE}))


def body_for(tokens: int, stream: bool) -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Why do spot GPUs get reclaimed?"}],
        "max_tokens": tokens,
        "stream": stream,
    }
    return json.dumps(body).encode()


def run(port: int, body: bytes, connections: int, seconds: float, router: int | None) -> dict:
    """One closed-loop run (router_bench's load processes); the router's CPU per request."""
    before = cpu_seconds(router) if router else 0.0
    result = aiohttp_run(port, connections, 1, seconds, body, "/v1/chat/completions")
    requests = result["rps"] * seconds
    used = (cpu_seconds(router) - before) if router else 0.0
    result.pop("socket_errors", None)
    result["router_cpu_us_per_request"] = used / max(1, requests) * 1e6
    return result


def median_of(rounds: list[dict]) -> dict:
    """Per figure, the median over the rounds."""
    return {
        load: {key: statistics.median(r[load][key] for r in rounds) for key in rounds[0][load]}
        for load in rounds[0]
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="16,128", help="answer lengths (comma list)")
    ap.add_argument("--itl-ms", type=float, default=0.0, help="engine inter-token latency")
    ap.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    ap.add_argument("--connections", type=int, default=8, help="clients for requests/s")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per path (medians reported)")
    ap.add_argument("--warmup-s", type=float, default=1.0, help="per path, before measuring")
    ap.add_argument("--json", action="store_true", help="print the report as JSON instead")
    args = ap.parse_args(argv)
    report: dict = {"cpus": os.cpu_count(), "itl_ms": args.itl_ms, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="assemble-bench-") as tmp:
        logdir = Path(tmp)
        procs = ProcessGroup()
        try:
            engine = start_sim(procs, logdir, "engine", 0, args.itl_ms)
            forward = start_router(procs, logdir, [engine], name="router-forward", engine=VLLM)
            assemble = start_router(
                procs,
                logdir,
                [engine],
                name="router-assemble",
                engine=VLLM,
                routing={"assemble_non_streaming": ["vllm"]},
            )
            paths = {
                "direct": (engine, False, None),
                "forward": (forward, False, forward),
                "assemble": (assemble, False, assemble),
                "stream": (forward, True, forward),
            }
            for tokens in (int(t) for t in args.tokens.split(",")):
                rounds: dict[str, list[dict]] = {name: [] for name in paths}
                for i in range(args.rounds):  # paths interleaved: a noisy box hits them alike
                    for name, (port, stream, router) in paths.items():
                        body = body_for(tokens, stream)
                        if i == 0:
                            run(port, body, 1, args.warmup_s, router)  # warm up
                        one = run(port, body, 1, args.seconds, router)
                        many = run(port, body, args.connections, args.seconds, router)
                        rounds[name].append({"c1": one, f"c{args.connections}": many})
                    print(f"  {tokens:>4} tokens, round {i + 1} done", file=sys.stderr)
                report["runs"][str(tokens)] = {n: median_of(r) for n, r in rounds.items()}
        finally:
            procs.stop_all()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, args.connections)
    return 0


def print_report(report: dict, connections: int) -> None:
    many = f"c{connections}"
    print(f"\nassemble_non_streaming, {report['cpus']} CPUs, engine itl {report['itl_ms']} ms\n")
    head = (
        f"{'tokens':>6} {'path':<9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'router µs/req':>14}"
    )
    print(head)
    for tokens, runs in report["runs"].items():
        for name, r in runs.items():
            cpu = r[many]["router_cpu_us_per_request"]
            print(
                f"{tokens:>6} {name:<9} {r['c1']['p50_ms']:>8.2f} {r['c1']['p99_ms']:>8.2f} "
                f"{r[many]['rps']:>8.0f} {cpu if name != 'direct' else float('nan'):>14.0f}"
            )
        a, f = runs["assemble"], runs["forward"]
        p50, p99 = (a["c1"][k] / f["c1"][k] for k in ("p50_ms", "p99_ms"))
        rps = a[many]["rps"] / f[many]["rps"]
        cpu = a[many]["router_cpu_us_per_request"] / f[many]["router_cpu_us_per_request"]
        print(
            f"{tokens:>6} {'ratio':<9} {p50:>7.2f}x {p99:>7.2f}x {rps:>7.2f}x {cpu:>13.2f}x"
            "   (assemble / forward)"
        )
        errors = sum(r[k]["non_2xx"] for r in runs.values() for k in ("c1", many))
        if errors:
            print(f"       {errors} non-2xx answers")


if __name__ == "__main__":
    sys.exit(main())
