"""Nodes that go quiet: a router under gunicorn, ``spotrelay sim vllm`` engines frozen with SIGSTOP.

A frozen engine keeps its sockets open and says nothing, so nothing closes
for the router to notice. What the client must see anyway:

* a stream whose engine freezes mid-way is hedged on another node once its
  gap leaves the stream's rhythm, and completes with exactly the text of an
  undisturbed run, with no client-side gap over 3 s (heartbeats stopped, so
  the node also expires; or heartbeats going on: a hung GPU);
* a non-streaming request on a frozen node that expires or is deleted is
  cut and retried on another node, and succeeds;
* a node reporting ``unhealthy`` has its open stream moved, and comes back
  with ``ready``;
* a node whose streams all stall at once is ejected as frozen, and its
  non-streaming request moves too;
* with the shared registry, an expiry seen by one router cuts the requests
  open on another.

Session affinity (``X-Session-ID``) steers the first attempt to node ``a``.
Every frozen engine is thawed (SIGCONT) when its test ends.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from spotrelay.sim.redis_local import NoRedisServer, start_local_redis
from tests.support import ROUTER_TOKEN, metric, register_node, router_nodes, start_router
from tests.support.resume_fleet import (
    CHAT,
    COMPLETIONS,
    MODEL,
    VLLM,
    Fleet,
    Heartbeats,
    body_for,
    start_fleet,
    stream,
)

pytestmark = pytest.mark.timeout(90)

#: ITL 50 ms (the issue's single-stream case), a quick prefill.
SIM_ARGS = ("--ttft-ms", "20", "--itl-ms", "50", "--max-model-len", "65536")
#: Long enough that only the new paths can move a frozen request within the test.
SLOW_TIMEOUTS = {"stream_idle_s": 60, "first_byte_s": 120}
MAX_GAP_S = 3.0
AUTH = {"Authorization": f"Bearer {ROUTER_TOKEN}"}


@pytest.fixture
def fleet(procs: ProcessGroup, logdir: Path) -> Fleet:
    return start_fleet(
        procs, logdir, ["a", "b"], *SIM_ARGS, registry={"ttl_s": 2}, timeouts=SLOW_TIMEOUTS
    )


def freeze_after(fleet: Fleet, node_id: str, events: int, then: Any = None):
    """An ``on_event`` hook that freezes ``node_id`` after ``events`` events (then ``then()``)."""

    def hook(n: int) -> None:
        if n == events:
            freeze(fleet, node_id)
            if then is not None:
                then()

    return hook


def freeze(fleet: Fleet, node_id: str) -> None:
    """SIGSTOP the node's engine: silent, its sockets open (thaw it in a ``finally``)."""
    fleet.nodes[node_id].proc.signal(signal.SIGSTOP)


def thaw(fleet: Fleet, node_id: str) -> None:
    fleet.nodes[node_id].proc.signal(signal.SIGCONT)


# -- streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("heartbeats", ["stopped", "continuing"])
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_stream_on_a_frozen_engine_is_hedged_with_exact_text(
    fleet: Fleet, path: str, heartbeats: str
) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    body = body_for(path, usage=True, max_tokens=60)
    with Heartbeats(fleet) as beats:
        ref = stream(fleet.router.url, path, body, session)
        assert ref.node == "a" and ref.done and not ref.errors
        hook = freeze_after(
            fleet, "a", 10, (lambda: beats.stop("a")) if heartbeats == "stopped" else None
        )
        try:
            res = stream(fleet.router.url, path, body, session, on_event=hook)
        finally:
            thaw(fleet, "a")
    assert res.done and not res.errors
    assert res.text == ref.text and res.usage == ref.usage
    assert res.longest_gap_s <= MAX_GAP_S, res.longest_gap_s
    print(f"{path} heartbeats {heartbeats}: longest client-side gap {res.longest_gap_s:.2f}s")
    assert fleet.metric("spotrelay_router_hedges_total", outcome="started") >= 1
    if heartbeats == "continuing":  # nothing else moved it: the hedge won
        assert fleet.metric("spotrelay_router_hedges_total", outcome="continuation_won") == 1


# -- non-streaming requests ----------------------------------------------------------------------


def in_flight(fleet: Fleet, node_id: str) -> int:
    return router_nodes(fleet.router.url).get(node_id, {}).get("in_flight", 0)


def generated(fleet: Fleet, node_id: str) -> float:
    """Tokens the node's engine generated so far, those of unfinished answers included."""
    return metric(fleet.nodes[node_id].url, "vllm:generation_tokens_total")


def wait_generating(fleet: Fleet, node_id: str, since: float, tokens: int) -> None:
    """Until the node's engine is ``tokens`` into what is open on it: mid-answer, so a
    freeze now leaves part of it generated and (unless streamed) nothing sent."""
    wait_until(
        lambda: generated(fleet, node_id) >= since + tokens,
        timeout=10,
        interval=0.02,
        what=f"{tokens} tokens generated on {node_id}",
    )


def post_in_background(url: str, body: dict[str, Any], headers: dict[str, str]):
    """POST in a thread; returns the thread and a dict that gets the response and time."""
    result: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        result["resp"] = requests.post(url, json=body, headers=headers, timeout=60)
        result["s"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("how", ["expired", "deleted"])
def test_non_streaming_request_on_a_frozen_node_is_retried_when_the_node_goes(
    fleet: Fleet, how: str
) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    body = {"model": MODEL, "prompt": "The spot market for GPUs", "max_tokens": 40}
    url = fleet.router.url + COMPLETIONS
    with Heartbeats(fleet) as beats:
        t0 = time.monotonic()
        ref = requests.post(url, json=body, headers=session, timeout=30)
        undisturbed = time.monotonic() - t0
        assert ref.status_code == 200 and ref.headers["X-Spotrelay-Node"] == "a"
        before = generated(fleet, "a")
        thread, result = post_in_background(url, body, session)
        wait_until(lambda: in_flight(fleet, "a") == 1, timeout=10, what="the request on a")
        try:
            wait_generating(fleet, "a", before, 5)  # part of the answer, nothing sent
            freeze(fleet, "a")
            if how == "expired":
                beats.stop("a")  # the host vanished: its heartbeats stop, ttl_s is 2
            else:
                requests.delete(f"{fleet.router.url}/nodes/a", headers=AUTH, timeout=5)
            thread.join(30)
        finally:
            thaw(fleet, "a")
    resp = result["resp"]
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Spotrelay-Node"] == "b"
    assert resp.json()["choices"][0]["text"] == ref.json()["choices"][0]["text"]
    print(f"non-streaming, node {how}: {result['s']:.2f}s (undisturbed {undisturbed:.2f}s)")
    assert result["s"] <= undisturbed + 10, (result["s"], undisturbed)
    assert fleet.metric("spotrelay_router_node_lost_cuts_total", event=how) == 1


# -- unhealthy and frozen nodes ---------------------------------------------------------------


def test_a_node_reporting_unhealthy_has_its_stream_moved_and_comes_back(fleet: Fleet) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    body = body_for(CHAT, usage=False, max_tokens=40)
    url = fleet.router.url
    with Heartbeats(fleet) as beats:
        ref = stream(url, CHAT, body, session)
        a = fleet.nodes["a"]

        def unhealthy(n: int) -> None:
            if n == 8:  # the agent found its engine hung (the engine itself still answers)
                beats.states["a"] = "unhealthy"
                register_node(url, ROUTER_TOKEN, "a", a.url, MODEL, "unhealthy", engine=VLLM)

        res = stream(url, CHAT, body, session, on_event=unhealthy)
        assert res.done and not res.errors and res.text == ref.text
        assert fleet.metric("spotrelay_router_node_lost_cuts_total", event="unhealthy") == 1
        assert router_nodes(url)["a"]["state"] == "unhealthy"  # still registered
        beats.states["a"] = "ready"
        register_node(url, ROUTER_TOKEN, "a", a.url, MODEL, engine=VLLM)
        assert stream(url, CHAT, body, session).node == "a"


def test_a_node_whose_streams_all_stall_is_ejected_as_frozen(fleet: Fleet) -> None:
    """Heartbeats go on (ttl_s far away): only the streams' silence can tell."""
    session = {"X-Session-ID": fleet.session_for("a")}
    router = fleet.router.url
    body = body_for(COMPLETIONS, usage=False, max_tokens=80)
    plain = {"model": MODEL, "prompt": "The spot market for GPUs", "max_tokens": 60}
    results: list[Any] = []
    with Heartbeats(fleet):
        ref = stream(router, COMPLETIONS, body, session)
        assert ref.done and not ref.errors
        before = generated(fleet, "a")
        threads = [
            threading.Thread(
                target=lambda: results.append(stream(router, COMPLETIONS, body, session))
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        single, answer = post_in_background(router + COMPLETIONS, plain, session)
        wait_until(lambda: in_flight(fleet, "a") == 3, timeout=10, what="3 requests on a")
        try:
            wait_generating(fleet, "a", before, 3 * 5)  # the streams have begun
            freeze(fleet, "a")
            for t in [*threads, single]:
                t.join(30)
            assert router_nodes(router)["a"]["state"] == "ejected"
        finally:
            thaw(fleet, "a")
    for r in results:
        assert r.done and not r.errors
        assert r.text == ref.text, (r.text, ref.text, r.finishes, ref.finishes)
    assert all(r.longest_gap_s <= MAX_GAP_S for r in results), [r.longest_gap_s for r in results]
    assert answer["resp"].status_code == 200 and answer["resp"].headers["X-Spotrelay-Node"] == "b"
    assert fleet.metric("spotrelay_router_node_events_total", event="frozen") == 1
    assert fleet.metric("spotrelay_router_node_lost_cuts_total", event="frozen") >= 1


# -- the shared registry ---------------------------------------------------------------------------


@pytest.fixture
def shared(procs: ProcessGroup, logdir: Path) -> Iterator[tuple[Fleet, str]]:
    """Router A (the fleet's; no hedging, expiry far away) and router B (ttl_s 2) on one Redis."""
    try:
        local = start_local_redis(procs, logdir)
    except NoRedisServer as exc:
        pytest.skip(str(exc))
    backend = {"backend": "redis", "redis_url": local.url, "redis_timeout_s": 1}
    fleet = start_fleet(
        procs,
        logdir,
        ["a", "b"],
        *SIM_ARGS,
        server={"workers": 1},
        registry={**backend, "ttl_s": 600},
        timeouts=SLOW_TIMEOUTS,
        hedge={"enabled": False, "frozen_min_streams": 0},
    )
    b = start_router(procs, logdir, {"registry": {**backend, "ttl_s": 2}}, name="router-b")
    yield fleet, b.url


def test_an_expiry_seen_by_another_router_cuts_the_stream_here(shared) -> None:
    fleet, other = shared
    session = {"X-Session-ID": fleet.session_for("a")}
    body = body_for(COMPLETIONS, usage=False, max_tokens=60)
    with Heartbeats(fleet) as beats:
        routers = (fleet.router.url, other)
        wait_until(
            lambda: all({"a", "b"} <= router_nodes(r).keys() for r in routers),
            timeout=10,
            what="both routers to know both nodes",
        )
        ref = stream(fleet.router.url, COMPLETIONS, body, session)
        assert ref.done and not ref.errors
        hook = freeze_after(fleet, "a", 10, lambda: beats.stop("a"))
        try:
            res = stream(fleet.router.url, COMPLETIONS, body, session, on_event=hook)
        finally:
            thaw(fleet, "a")
    assert res.done and not res.errors and res.text == ref.text
    # Router B expired it (2 s), router A (600 s) only heard of it through Redis.
    assert fleet.metric("spotrelay_router_node_lost_cuts_total", event="expired") == 1
    assert res.longest_gap_s <= 2 + MAX_GAP_S, res.longest_gap_s
