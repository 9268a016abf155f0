"""A router under gunicorn with ``spotrelay sim vllm`` nodes, and a strict SSE client for it.

Shared by the end-to-end resume and endpoint tests (``test_resume_e2e.py``,
``test_resume_engines.py``, ``test_router_endpoints.py``). The simulator's text is
deterministic, so tests can compare a broken-and-resumed stream with an unbroken one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from spotrelay.router.registry.balancer import rendezvous_weight
from spotrelay.router.stream.sse import SSEParser
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .services import (
    ROUTER_TOKEN,
    Service,
    post_json,
    register_node,
    scrape,
    start_router,
    start_sim_vllm,
)

MODEL = "sim-model"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
#: The engine block of a vLLM node (the simulator speaks vLLM's dialect, extensions included).
VLLM = {"kind": "vllm", "version": "0.11.0", "capabilities": ["continue_final_message"]}
ROUTER_CONFIG = {
    "registry": {"ttl_s": 600},
    # Breaks count against a node; these tests break nodes on purpose, many times.
    "health": {"consecutive_failures": 100000},
    "routing": {"no_capacity_wait_s": 1},
    "resume": {"enabled": True, "max_attempts": 2},
}


@dataclass
class Fleet:
    """A router under gunicorn and its ``spotrelay sim vllm`` nodes, by node id."""

    router: Service
    nodes: dict[str, Service]
    procs: ProcessGroup

    def session_for(self, node_id: str) -> str:
        """An X-Session-ID whose rendezvous winner (among all nodes) is ``node_id``."""
        for i in range(10000):
            key = f"s{i}"
            if max(self.nodes, key=lambda n: rendezvous_weight(key, n)) == node_id:
                return key
        raise AssertionError("no session key found")

    def fault(self, node_id: str, **spec: Any) -> None:
        """Arm a simulator fault on one node (``POST /_control/faults``)."""
        post_json(self.nodes[node_id].url + "/_control/faults", spec)

    def reset(self) -> None:
        """Clear every node's faults, so tests sharing the fleet start clean."""
        for node in self.nodes.values():
            post_json(node.url + "/_control/reset", {})

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the router's ``/metrics``."""
        return scrape(self.router.control_url + "/metrics", name, **labels)


class Heartbeats:
    """Re-registers nodes with a router every ``interval_s``, as their agents would;
    :meth:`stop` silences one (its host vanished)."""

    def __init__(self, fleet: Fleet, interval_s: float = 0.3, router_url: str = "") -> None:
        self.fleet = fleet
        self.url = router_url or fleet.router.url
        self.interval_s = interval_s
        self.silent: set[str] = set()
        self.states: dict[str, str] = {}  # node id: the state it reports (default ready)
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeats:
        # The first round before the test goes on: with a short ttl_s a node may have
        # expired while the fleet started (a slow simulator start); a request racing the
        # thread's first round would then find it missing.
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(5)

    def stop(self, node_id: str) -> None:
        self.silent.add(node_id)

    def _run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self._beat()

    def _beat(self) -> None:
        """One heartbeat from every node not silenced."""
        for node_id, node in self.fleet.nodes.items():
            if node_id not in self.silent:
                with contextlib.suppress(RuntimeError, OSError):
                    state = self.states.get(node_id, "ready")
                    register_node(
                        self.url, ROUTER_TOKEN, node_id, node.url, MODEL, state, engine=VLLM
                    )


def start_fleet(
    procs: ProcessGroup, logdir: Path, names: list[str], *sim_args: str, **router_cfg: Any
) -> Fleet:
    """Start a router (``ROUTER_CONFIG`` plus ``router_cfg``) and one simulator per name.

    Each simulator gets ``sim_args`` and is registered as a vLLM node; returns once the
    router is ready.
    """
    router = start_router(procs, logdir, {**ROUTER_CONFIG, **router_cfg})
    nodes = {}
    for name in names:
        nodes[name] = start_sim_vllm(procs, logdir, *sim_args, name=f"sim-{name}", model=MODEL)
        register_node(router.control_url, ROUTER_TOKEN, name, nodes[name].url, MODEL, engine=VLLM)
    wait_until(
        lambda: requests.get(router.url + "/readyz", timeout=2).status_code == 200,
        timeout=10,
        what="router ready",
    )
    return Fleet(router, nodes, procs)


@contextmanager
def running_fleet(logdir: Path, names: list[str], *sim_args: str, **router_cfg: Any):
    """:func:`start_fleet` with its own process group, stopped on exit (module fixtures)."""
    group = ProcessGroup()
    try:
        yield start_fleet(group, logdir, names, *sim_args, **router_cfg)
    finally:
        group.stop_all()


@dataclass
class Result:
    """What a client saw of one stream: its text, chunks, usage, finishes and errors."""

    text: str
    chunks: list[dict[str, Any]]
    usage: list[dict[str, Any]]
    finishes: list[str]
    roles: int
    errors: list[dict[str, Any]]
    done: bool
    node: str | None
    longest_gap_s: float = 0.0  # the longest wait for an event, first byte to [DONE]
    gaps: list[float] = field(default_factory=list)


def stream(
    url: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    on_event: Callable[[int], None] | None = None,
) -> Result:
    """POST a streaming request and parse the answer strictly (one ``[DONE]``, and last).

    ``on_event(n)`` runs after the n-th event arrived (to inject a fault mid-way); the
    result records the gaps between events as the client saw them.
    """
    resp = requests.post(url + path, json=body, headers=headers or {}, stream=True, timeout=60)
    assert resp.status_code == 200, resp.text
    parser = SSEParser()
    events = []
    gaps = []
    last = time.monotonic()
    for piece in resp.iter_content(chunk_size=None):
        new = parser.feed(piece)
        if not new:
            continue
        now = time.monotonic()
        gaps.append(now - last)
        last = now
        for event in new:
            events.append(event)
            if on_event is not None:
                on_event(len(events))
    done = bool(events) and events[-1].is_done
    assert sum(e.is_done for e in events) == int(done), "exactly one [DONE], last"
    res = Result("", [], [], [], 0, [], done, resp.headers.get("X-Spotrelay-Node"))
    res.gaps = gaps[1:]  # the first is the time to the first event
    res.longest_gap_s = max(res.gaps, default=0.0)
    for e in events:
        if e.is_done:
            continue
        obj = e.json()
        if "error" in obj:
            res.errors.append(obj["error"])
            continue
        res.chunks.append(obj)
        if obj.get("usage"):
            res.usage.append(obj["usage"])
        for ch in obj.get("choices", []):
            if path == CHAT:
                res.roles += "role" in ch.get("delta", {})
                res.text += ch.get("delta", {}).get("content") or ""
            else:
                res.text += ch.get("text") or ""
            if ch.get("finish_reason"):
                res.finishes.append(ch["finish_reason"])
    return res


def body_for(
    path: str, *, usage: bool, max_tokens: int | None = 16, stream: bool = True, **extra: Any
) -> dict[str, Any]:
    """A streaming (or not) completions or chat body for ``MODEL``; ``usage`` asks for a
    usage chunk; ``max_tokens`` None leaves the engine's default."""
    body: dict[str, Any] = {"model": MODEL, "stream": stream, **extra}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if path == CHAT:
        body["messages"] = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Why do spot GPUs get reclaimed?"},
        ]
    else:
        body["prompt"] = "The spot market for GPUs"
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body
