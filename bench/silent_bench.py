"""Silent-failure benchmark: what clients see when a node goes quiet instead of away.

Real processes on loopback, product defaults (router and agent configurations
left at their defaults but for ports and tokens): one router (gunicorn),
three nodes, each a ``spotrelay sim vllm`` engine, an IMDS emulator and
``spotrelay agent``. The workload is the one of issue 21: 200 chat requests,
every other one streaming, 24 at a time, sent with the official ``openai``
client (60 s timeout, no client retries, so what the router does is what the
client sees), text checked against the simulator's deterministic output.

Runs, each on a fresh fleet:

- ``undisturbed``: the baseline every ratio is against;
- ``host_freeze``: 2 s in, one node's engine and agent are SIGSTOPped (a host
  that froze: sockets open, heartbeats stop) and stay so;
- ``engine_freeze``: the engine alone is SIGSTOPped, its agent goes on
  heartbeating (a hung GPU);
- ``sigkill``: engine and agent SIGKILLed (sockets close: the loud failure);
- ``decode_pauses``: no fault, every engine holds decode 500 ms every 3 s (a
  long prefill of another request): the hedge rate (router's
  ``spotrelay_router_hedges_total``) and the extra prefill tokens (engines'
  prompt tokens over the baseline's) are the cost of false stall alarms.

Then single requests (ITL 50 ms) whose node freezes 2 s in, both freeze
kinds: the longest client-side gap of a stream and its text against an
undisturbed run, and how much later a non-streaming request finishes.

Run from the repository root: ``.venv/bin/python bench/silent_bench.py``
(about 5 minutes on 2 cores while the router waits out its timeouts;
``--json`` for the figures as JSON). It prints figures and ratios and asserts
nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from spotrelay.sim.traffic import PROMPTS, expected_text
from tests.support import (
    ROUTER_TOKEN,
    AgentProcess,
    Service,
    router_nodes,
    scrape,
    start_agent,
    start_imds,
    start_router,
    start_sim_vllm,
)

MODEL = "sim-model"
RUNS = ("undisturbed", "host_freeze", "engine_freeze", "sigkill", "decode_pauses")
FAULT_AT_S = 2.0
PAUSES = ("--decode-pause-ms", "500", "--decode-pause-every-s", "3")


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


#: The routers' configuration: the defaults, unless ``--assemble``.
ROUTER_CONFIG: dict[str, Any] = {}

# --------------------------------------------------------------------- the fleet


@dataclass
class Node:
    name: str
    engine: Service
    imds: Service
    agent: AgentProcess

    def engine_stats(self) -> dict[str, Any] | None:
        try:
            return get_json(self.engine.url + "/_control/stats")["engine"]
        except OSError:
            return None  # frozen or dead


class Fleet:
    """A router and ``nodes`` nodes, started fresh for each run."""

    def __init__(
        self,
        logdir: Path,
        engine_args: tuple[str, ...],
        nodes: int = 3,
        router_config: dict[str, Any] | None = None,
    ) -> None:
        self.procs = ProcessGroup()
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.router = start_router(self.procs, logdir, router_config, ttl_s=None)  # product ttl_s
        self.nodes: list[Node] = []
        for i in range(nodes):
            name = f"node-{i + 1}"
            imds = start_imds(
                self.procs, logdir, "--instance-id", f"i-0be{i:014x}", name=f"{name}-imds"
            )
            engine = start_sim_vllm(self.procs, logdir, *engine_args, name=f"{name}-engine")
            config = {
                "node": {"id": name, "advertise_url": engine.url},
                "router": {"urls": [self.router.control_url], "node_token": ROUTER_TOKEN},
                "engine": {"url": engine.url, "model": MODEL, "process_name": None,
                           "systemd_unit": None},
                "imds": {"url": imds.url},
                "drain": {"stop_engine": False},
                "state_dir": str(logdir / f"state-{name}"),
            }  # fmt: skip
            agent = start_agent(self.procs, logdir, config, name=f"{name}-agent")
            self.nodes.append(Node(name, engine, imds, agent))
        wait_until(
            lambda: all(
                router_nodes(self.router.control_url).get(n.name, {}).get("state") == "ready"
                for n in self.nodes
            ),
            timeout=60,
            what="every node ready",
        )

    def client(self, timeout_s: float) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.router.url + "/v1", api_key="x", max_retries=0, timeout=timeout_s
        )

    def hit(self, node: Node, fault: str) -> None:
        """``host_freeze``, ``engine_freeze`` or ``sigkill`` one node."""
        if fault == "sigkill":
            for proc in (node.engine.proc, node.agent.proc):
                proc.signal(signal.SIGKILL)
            return
        stopped = [node.engine.proc] + ([node.agent.proc] if fault == "host_freeze" else [])
        for proc in stopped:
            proc.signal(signal.SIGSTOP)

    def busy_node(self) -> Node | None:
        for node in self.nodes:
            stats = node.engine_stats()
            if stats and stats["running"] > 0:
                return node
        return None

    def prompt_tokens(self) -> int:
        return sum(int((n.engine_stats() or {}).get("prompt_tokens_total", 0)) for n in self.nodes)

    def hedges(self) -> dict[str, float] | None:
        """The router's hedge counters by outcome; None when it exports none."""
        url = self.router.control_url + "/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            if b"spotrelay_router_hedges_total" not in resp.read():
                return None
        return {
            outcome: scrape(url, "spotrelay_router_hedges_total", outcome=outcome)
            for outcome in ("started", "original_won", "continuation_won")
        }

    def close(self) -> None:
        self.procs.stop_all(timeout=5)  # stop() continues a frozen process first


@contextlib.contextmanager
def fleet(logdir: Path, engine_args: tuple[str, ...]) -> Iterator[Fleet]:
    f = Fleet(logdir, engine_args, router_config=ROUTER_CONFIG)
    try:
        yield f
    finally:
        f.close()


# ------------------------------------------------------------------- requests


@dataclass
class Outcome:
    """One request as the client saw it."""

    stream: bool
    ok: bool = False
    first_token: bool = False  # a stream delivered content before it ended or failed
    latency_s: float = 0.0
    longest_gap_s: float = 0.0  # streams: between request start / content chunks
    text: str = ""
    error: str | None = None


def chat(
    client: openai.OpenAI, prompt: str, max_tokens: int, stream: bool, on_start: Callable[[], None]
) -> Outcome:
    """One chat request; never raises."""
    out = Outcome(stream)
    messages: list[Any] = [{"role": "user", "content": prompt}]
    start = last = time.monotonic()
    on_start()
    try:
        if not stream:
            resp = client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=max_tokens
            )
            out.text = resp.choices[0].message.content or ""
        else:
            parts, finish = [], None
            for chunk in client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=max_tokens, stream=True
            ):
                if not chunk.choices:
                    continue
                if delta := chunk.choices[0].delta.content:
                    now = time.monotonic()
                    out.longest_gap_s = max(out.longest_gap_s, now - last)
                    last, out.first_token = now, True
                    parts.append(delta)
                finish = chunk.choices[0].finish_reason or finish
            if finish is None:
                raise RuntimeError("stream ended without a finish_reason")
            out.text = "".join(parts)
        out.ok = out.text == expected_text("chat", prompt, max_tokens)
        if not out.ok:
            out.error = "text differs from an undisturbed run"
    except Exception as exc:  # the client's view: any exception is a failure
        out.error = f"{type(exc).__name__}: {str(exc)[:160]}"
        if stream:  # the silence that ended in the error is a gap too
            out.longest_gap_s = max(out.longest_gap_s, time.monotonic() - last)
    out.latency_s = time.monotonic() - start
    return out


@dataclass
class RunResult:
    name: str
    requests: int = 0
    non_stream_failed: int = 0
    stream_failed_before_first_token: int = 0
    stream_broken_midway: int = 0
    wrong_text: int = 0
    slowest_s: float = 0.0
    p50_s: float = 0.0
    wall_s: float = 0.0
    hedges: dict[str, float] | None = None
    prompt_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return (
            self.non_stream_failed
            + self.stream_failed_before_first_token
            + (self.stream_broken_midway)
        )


def workload(n: int, seed: int) -> list[tuple[str, int, bool]]:
    """(prompt, max_tokens, stream) for each request: the same list in every run."""
    rng = random.Random(seed)
    return [
        (f"{PROMPTS[i % len(PROMPTS)]} #{i}", rng.randint(32, 64), i % 2 == 0) for i in range(n)
    ]


def run_load(f: Fleet, name: str, args: argparse.Namespace) -> RunResult:
    fault = name if name in ("host_freeze", "engine_freeze", "sigkill") else None
    client = f.client(args.timeout)
    started = threading.Event()
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = [
            pool.submit(chat, client, prompt, max_tokens, stream, started.set)
            for prompt, max_tokens, stream in workload(args.requests, args.seed)
        ]
        if fault:
            started.wait(30)
            time.sleep(max(0.0, FAULT_AT_S - (time.monotonic() - t0)))
            f.hit(f.nodes[0], fault)
        outcomes = [fut.result() for fut in futures]
    result = RunResult(name, requests=len(outcomes), wall_s=round(time.monotonic() - t0, 2))
    for o in outcomes:
        if o.error and o.error.startswith("text differs"):
            result.wrong_text += 1
        if o.ok:
            continue
        if not o.stream:
            result.non_stream_failed += 1
        elif o.first_token:
            result.stream_broken_midway += 1
        else:
            result.stream_failed_before_first_token += 1
        if len(result.errors) < 5:
            result.errors.append(o.error or "?")
    latencies = sorted(o.latency_s for o in outcomes)
    result.slowest_s = round(latencies[-1], 2)
    result.p50_s = round(latencies[len(latencies) // 2], 2)
    result.hedges = f.hedges()
    if not fault:  # a frozen engine cannot be asked
        result.prompt_tokens = f.prompt_tokens()
    return result


# ---------------------------------------------------------------- single requests


def single(f: Fleet, stream: bool, fault: str | None, timeout: float) -> Outcome:
    """One request (100 tokens at ITL 50 ms); its node gets ``fault`` 2 s in."""
    box: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: box.append(chat(f.client(timeout), "a single frozen one", 100, stream, str))
    )
    t0 = time.monotonic()
    thread.start()
    if fault:
        node = wait_until(f.busy_node, timeout=10, what="the request's node")
        time.sleep(max(0.0, FAULT_AT_S - (time.monotonic() - t0)))
        f.hit(node, fault)
    thread.join(timeout + 10)
    return box[0]


def run_singles(logdir: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    engine = ("--itl-ms", "50", "--ttft-ms", "50")
    out: dict[str, dict[str, Any]] = {}
    for fault in (None, "host_freeze", "engine_freeze"):
        name = fault or "undisturbed"
        with fleet(logdir / f"single-{name}", engine) as f:
            s = single(f, True, fault, args.timeout)
        with fleet(logdir / f"single-{name}-nonstream", engine) as f:
            n = single(f, False, fault, args.timeout)
        out[name] = {
            "stream_ok": s.ok,
            "stream_longest_gap_s": round(s.longest_gap_s, 2),
            "stream_text_exact": s.ok,  # completed, and equal to the undisturbed text
            "stream_error": s.error,
            "nonstream_ok": n.ok,
            "nonstream_latency_s": round(n.latency_s, 2),
            "nonstream_error": n.error,
        }
        log(f"single {name}: {out[name]}")
    return out


# ------------------------------------------------------------------- reporting


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def render(runs: list[RunResult], singles: dict[str, dict[str, Any]], base_tokens: int) -> str:
    base = next((r for r in runs if r.name == "undisturbed"), None)
    lines = [
        f"{'run':<15}{'non-stream':>11}{'stream <1st':>12}{'stream mid':>11}{'wrong':>6}"
        f"{'slowest':>9}{'vs base':>8}{'p50':>7}{'wall':>7}{'vs base':>8}  hedges",
    ]
    for r in runs:
        hedges = (
            "n/a (router exports none)"
            if r.hedges is None
            else " ".join(f"{k}={v:g}" for k, v in r.hedges.items())
        )
        lines.append(
            f"{r.name:<15}{r.non_stream_failed:>11}{r.stream_failed_before_first_token:>12}"
            f"{r.stream_broken_midway:>11}{r.wrong_text:>6}{r.slowest_s:>8.1f}s"
            f"{ratio(r.slowest_s, base.slowest_s if base else 0):>8}{r.p50_s:>6.1f}s"
            f"{r.wall_s:>6.1f}s{ratio(r.wall_s, base.wall_s if base else 0):>8}  {hedges}"
        )
    pauses = next((r for r in runs if r.name == "decode_pauses"), None)
    if pauses is not None:
        streams = sum(1 for *_, s in workload(pauses.requests, 0) if s)
        started = (pauses.hedges or {}).get("started")
        rate = "n/a" if started is None else f"{100 * started / max(1, streams):.1f} %"
        extra = pauses.prompt_tokens - base_tokens if base_tokens else None
        lines += [
            "",
            f"decode pauses: hedge rate {rate} of {streams} streams; extra prefill tokens "
            f"{'n/a' if extra is None else extra} (engines' prompt tokens over the baseline's)",
        ]
    if singles:
        base_ns = singles.get("undisturbed", {}).get("nonstream_latency_s", 0.0)
        lines += ["", "single request, ITL 50 ms, its node frozen 2 s in:"]
        for name, s in singles.items():
            lines.append(
                f"  {name:<14} stream: longest gap {s['stream_longest_gap_s']:.2f}s, "
                f"{'text exact' if s['stream_text_exact'] else 'FAILED: ' + str(s['stream_error'])}"
                f" | non-stream: {'ok' if s['nonstream_ok'] else 'FAILED'} in "
                f"{s['nonstream_latency_s']:.2f}s (+{s['nonstream_latency_s'] - base_ns:.2f}s)"
            )
    for r in runs:
        for err in r.errors[:2]:
            lines.append(f"  {r.name}: {err}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=24)
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout, seconds")
    p.add_argument("--itl-ms", type=float, default=20.0, help="engines' ITL in the load runs")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {RUNS}")
    p.add_argument("--no-single", action="store_true", help="skip the single-request cases")
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--logdir", type=Path, help="process logs (default: a temp directory)")
    p.add_argument(
        "--assemble",
        action="store_true",
        help="routing.assemble_non_streaming: [vllm] (non-streaming requests as streams)",
    )
    args = p.parse_args()
    if args.assemble:
        ROUTER_CONFIG["routing"] = {"assemble_non_streaming": ["vllm"]}
    names = [n for n in args.runs.split(",") if n]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        p.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="silent-bench-"))
    log(f"logs in {logdir}")
    engine = ("--itl-ms", str(args.itl_ms), "--ttft-ms", "50", "--max-num-seqs", "64")
    runs: list[RunResult] = []
    for name in names:
        with fleet(logdir / name, engine + (PAUSES if name == "decode_pauses" else ())) as f:
            runs.append(run_load(f, name, args))
        log(f"{name}: {asdict(runs[-1])}")
    base_tokens = next((r.prompt_tokens for r in runs if r.name == "undisturbed"), 0)
    singles = {} if args.no_single else run_singles(logdir, args)
    if args.json:
        doc = {
            "runs": {r.name: {**asdict(r), "failed": r.failed} for r in runs},
            "singles": singles,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render(runs, singles, base_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
