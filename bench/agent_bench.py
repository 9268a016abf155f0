"""Agent benchmark: notice-to-excluded latency and the agent's idle footprint.

Real processes on loopback: the IMDS emulator, a simulator engine, the router
(gunicorn) and ``spotrelay agent`` with the *default* IMDS poll interval (1 s)
and heartbeat (2 s), and a termination lifecycle hook (moto behind the test
suite's lifecycle front) so a drain does everything it does in production.

1. Notice-to-excluded: for each of N notices, the agent is started fresh (empty
   state dir, emulator reset), registers, and after a random 0-1 s pause (so
   the notice lands at a random phase of the poll cycle) a spot notice is set
   through the emulator's control API. The clock stops when ``GET /nodes`` on
   the router no longer shows the node ``ready`` (polled every 5 ms): from then
   on the router sends it no new request.
   With ``--redis URL|auto`` two routers (two workers each) share a registry in
   Redis; the agent talks to router A only and the clock stops when *every*
   worker of router B no longer shows the node ``ready``: notice-to-excluded
   across routers.
2. Footprint: one agent registered and idle (no event) for ``--idle-s``
   seconds: RSS, and CPU time used over that window as a percentage of one
   core (psutil). RSS is also sampled right after a drain that completed
   the lifecycle action (the AWS client and credentials loaded).

Run from the repository root: ``.venv/bin/python bench/agent_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spotrelay.core.control_client import ControlClient
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import (
    ROUTER_TOKEN,
    start_agent,
    start_imds,
    start_router,
    start_sim_vllm,
)
from tests.support.aws import LifecycleFront, aws_env, create_asg


def post(url: str, body: dict[str, Any] | None = None) -> None:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def node_state(router_url: str, node_id: str) -> str | None:
    nodes = ControlClient(router_url, ROUTER_TOKEN).nodes().nodes
    return next((n.state for n in nodes if n.id == node_id), None)


def on_every_worker(router_url: str, node_id: str, workers: int, ready: bool) -> bool:
    """Poll with fresh connections (urllib's: one per call) until ``workers`` distinct
    workers show the node ready (``ready``) or not ready; False after 10 s."""
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    client = ControlClient(router_url, ROUTER_TOKEN)
    while len(seen) < workers:
        if time.monotonic() > deadline:
            return False
        view = client.nodes()
        states = {n.id: n.state for n in view.nodes}
        if (states.get(node_id) == "ready") == ready:
            seen.add(view.answered_by or "")
    return True


def start_routers(procs: ProcessGroup, logdir: Path, redis: str | None):
    """(router the agent talks to, router whose view is timed, its worker count)."""
    if not redis:
        router = start_router(procs, logdir, ttl_s=None)
        return router, router, 1
    if redis == "auto":
        from spotrelay.sim.redis_local import start_local_redis

        redis = start_local_redis(procs, logdir).url
    shared = {"registry": {"backend": "redis", "redis_url": redis}, "server": {"workers": 2}}
    a = start_router(procs, logdir, shared, name="router-a", ttl_s=None)
    b = start_router(procs, logdir, shared, name="router-b", ttl_s=None)
    return a, b, 2


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notices", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--poll-s", type=float, default=1.0, help="imds.poll_interval_s")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument(
        "--redis",
        help="two routers share a registry here (redis:// URL or auto); time the exclusion "
        "on every worker of the router the agent does not talk to",
    )
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    asg = create_asg(f"http://{host}:{port}", "bench-asg")
    front = LifecycleFront(f"http://{host}:{port}")
    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    logdir = work / "logs"
    logdir.mkdir()
    results: dict[str, Any] = {
        "poll_interval_s": args.poll_s,
        "notices": args.notices,
        "across_routers": bool(args.redis),
    }
    try:
        with ProcessGroup() as procs:
            router, watched, workers = start_routers(procs, logdir, args.redis)
            imds = start_imds(procs, logdir, "--instance-id", asg.instance_id)
            engine = start_sim_vllm(procs, logdir, model="bench-model")

            def config(state_dir: Path) -> dict[str, Any]:
                return {
                    "router": {"urls": [router.control_url], "node_token": ROUTER_TOKEN},
                    "engine": {"url": engine.url, "model": "bench-model", "systemd_unit": None},
                    "imds": {"url": imds.url, "poll_interval_s": args.poll_s},
                    "lifecycle": {
                        "asg_name": asg.asg_name,
                        "hook_name": asg.hook_name,
                        "region": "us-east-1",
                        "endpoint_url": front.url,
                    },
                    "state_dir": str(state_dir),
                }

            # 1. notice-to-excluded
            latencies: list[float] = []
            rss_after_drain: list[float] = []
            for i in range(args.notices):
                post(f"{imds.url}/_control/reset")
                front.arm(asg.instance_id)
                agent = start_agent(
                    procs, logdir, config(work / f"state-{i}"), name=f"agent-{i}", env=aws_env()
                )
                wait_until(
                    lambda: node_state(router.control_url, asg.instance_id) == "ready",
                    timeout=20,
                    interval=0.01,
                    what="registered",
                )
                if watched is not router and not on_every_worker(
                    watched.control_url, asg.instance_id, workers, ready=True
                ):
                    raise TimeoutError("router B never listed the node ready on every worker")
                time.sleep(random.uniform(0, args.poll_s))
                t0 = time.perf_counter()
                post(f"{imds.url}/_control/spot", {"action": "terminate", "lead_s": 120})
                if watched is router:
                    wait_until(
                        lambda: node_state(router.control_url, asg.instance_id) != "ready",
                        timeout=10,
                        interval=0.005,
                        what="excluded",
                    )
                elif not on_every_worker(
                    watched.control_url, asg.instance_id, workers, ready=False
                ):
                    raise TimeoutError("router B did not exclude the node on every worker")
                latencies.append(time.perf_counter() - t0)
                wait_until(
                    lambda: node_state(router.control_url, asg.instance_id) is None,
                    timeout=30,
                    what="deregistered",
                )
                wait_until(
                    lambda a=agent: "drain finished" in a.proc.tail(60), timeout=30, what="drained"
                )
                rss_after_drain.append(psutil.Process(agent.proc.pid).memory_info().rss / 2**20)
                agent.proc.stop()
                print(f"notice {i + 1:2d}: excluded after {latencies[-1] * 1000:7.1f} ms")
            results["notice_to_excluded_ms"] = {
                "p50": round(pct(latencies, 0.5) * 1000, 1),
                "p99": round(pct(latencies, 0.99) * 1000, 1),
                "max": round(max(latencies) * 1000, 1),
                "mean": round(statistics.mean(latencies) * 1000, 1),
                "samples": [round(x * 1000, 1) for x in latencies],
            }
            results["rss_after_drain_mb"] = round(max(rss_after_drain), 1)
            lifecycle_ok = sum(1 for c in front.completions() if c.result == "ok")
            results["lifecycle_completed"] = lifecycle_ok

            # 2. idle footprint
            post(f"{imds.url}/_control/reset")
            agent = start_agent(
                procs, logdir, config(work / "state-idle"), name="agent-idle", env=aws_env()
            )
            wait_until(
                lambda: node_state(router.control_url, asg.instance_id) == "ready",
                timeout=20,
                what="registered",
            )
            proc = psutil.Process(agent.proc.pid)
            time.sleep(2.0)  # past start-up
            c0, w0 = proc.cpu_times(), time.perf_counter()
            rss = []
            end = w0 + args.idle_s
            while time.perf_counter() < end:
                rss.append(proc.memory_info().rss / 2**20)
                time.sleep(1.0)
            c1, w1 = proc.cpu_times(), time.perf_counter()
            cpu = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0) * 100
            results["idle"] = {
                "seconds": round(w1 - w0, 1),
                "cpu_percent_of_one_core": round(max(cpu, 0.0), 2),  # never "-0.0"
                "rss_mb_max": round(max(rss), 1),
                "rss_mb_median": round(statistics.median(rss), 1),
                "aws_client_loaded": False,
                "threads": proc.num_threads(),
            }
            agent.proc.stop()
    finally:
        front.close()
        moto.stop()

    n = results["notice_to_excluded_ms"]
    idle = results["idle"]
    print()
    where = " on every worker of the other router" if args.redis else ""
    print(f"notice-to-excluded{where} over {args.notices} notices (poll {args.poll_s} s):")
    print(f"  p50 {n['p50']} ms   p99 {n['p99']} ms   max {n['max']} ms   mean {n['mean']} ms")
    print(f"lifecycle actions completed: {results['lifecycle_completed']}/{args.notices}")
    print(
        f"idle agent over {idle['seconds']} s: CPU {idle['cpu_percent_of_one_core']} % of a core,"
        f" RSS {idle['rss_mb_max']} MB (max), {idle['threads']} threads"
    )
    print(
        f"RSS right after a drain (lifecycle action completed): {results['rss_after_drain_mb']} MB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
