"""The agent's heartbeat link against a real router (gunicorn on loopback).

What a node's operator relies on: heartbeats keep going whatever one pass
hit, and a state change reaches the router at once, not at the next tick.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spotrelay.agent.routers import RouterClient, RouterLink
from spotrelay.core.protocol import NodeReport, NodeState
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .support import ROUTER_TOKEN, Service, router_nodes, start_router, start_sim_vllm

MODEL = "sim-model"


@pytest.fixture
def router(procs: ProcessGroup, logdir: Path) -> Service:
    return start_router(procs, logdir, {"registry": {"ttl_s": 30}})


@pytest.fixture
def engine_url(procs: ProcessGroup, logdir: Path) -> str:
    return start_sim_vllm(procs, logdir, "--model", MODEL).url


class Reports:
    """The agent's ``report_fn``: the current state, and a bug on chosen calls."""

    def __init__(self, url: str, fail_on: set[int] = frozenset()) -> None:
        self.url = url
        self.state = NodeState.READY
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self) -> NodeReport:
        self.calls += 1
        if self.calls in self.fail_on:
            raise KeyError("a bug while building the report")
        return NodeReport(url=self.url, models=(MODEL,), state=self.state)


@pytest.fixture
def link_for(router: Service) -> Iterator:
    links: list[RouterLink] = []

    def make(reports: Reports, interval_s: float) -> RouterLink:
        client = RouterClient(router.control_url, "n1", ROUTER_TOKEN, timeout_s=2)
        link = RouterLink(client, interval_s, reports, threading.Event())
        links.append(link)
        link.start()
        return link

    yield make
    for link in links:
        link.stop()
        link.join(5)


def test_heartbeats_go_on_after_a_pass_that_raised(router: Service, engine_url: str, link_for):
    reports = Reports(engine_url, fail_on={2})
    link = link_for(reports, 0.05)
    wait_until(lambda: reports.calls >= 6, timeout=10, what="heartbeats after the failing one")
    assert link.is_alive()
    acked = link.acked_at
    wait_until(lambda: link.acked_at != acked, timeout=5, what="another acknowledged heartbeat")
    assert router_nodes(router.control_url)["n1"]["state"] == "ready"


def test_a_state_change_reaches_the_router_at_once(router: Service, engine_url: str, link_for):
    reports = Reports(engine_url)
    link = link_for(reports, 3600)  # no second heartbeat by the clock during this test
    wait_until(
        lambda: "n1" in router_nodes(router.control_url), timeout=10, what="the first heartbeat"
    )
    reports.state = NodeState.DRAINING
    link.wake()
    wait_until(
        lambda: router_nodes(router.control_url)["n1"]["state"] == "draining",
        timeout=5,
        what="the draining report, sent when woken",
    )
    link.stop()
    link.join(5)
    assert not link.is_alive()  # stop() cuts the hour-long wait short
