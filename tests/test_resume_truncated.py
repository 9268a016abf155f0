"""A stream that ends before its finish_reason is a break, never a complete answer.

Router under gunicorn; node ``a`` is a scripted engine over real HTTP that
ends its stream cleanly without a ``finish_reason`` (as llama.cpp's server
does when another request arrives), node ``b`` a ``spotrelay sim vllm``.
Session affinity steers the first attempt to ``a``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from spotrelay.core.net import wait_until
from spotrelay.core.processes import ProcessGroup
from spotrelay.router.balancer import rendezvous_weight
from spotrelay.router.resume import RESUME_HEADER
from tests.fake_engine import Script, fake_engine
from tests.support import ROUTER_TOKEN, Service, register_node, scrape, start_router, start_sim_vllm
from tests.test_resume_e2e import COMPLETIONS, MODEL, ROUTER_CONFIG, body_for, stream

VLLM = {"kind": "vllm", "version": "0.11.0", "capabilities": ["continue_final_message"]}
PIECES = ["Once", " upon", " a", " time"]


@dataclass
class Fleet:
    router: Service
    sim: Service

    def session_for(self, node_id: str) -> dict[str, str]:
        for i in range(10000):
            key = f"s{i}"
            if max(("a", "b"), key=lambda n: rendezvous_weight(key, n)) == node_id:
                return {"X-Session-ID": key}
        raise AssertionError("no session key found")

    def breaks(self, reason: str) -> float:
        return scrape(
            self.router.url + "/metrics", "spotrelay_router_stream_breaks_total", reason=reason
        )

    def register(self, node_id: str, url: str) -> None:
        register_node(self.router.url, ROUTER_TOKEN, node_id, url, MODEL, engine=VLLM)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logdir: Path = tmp_path_factory.mktemp("truncated")
    group = ProcessGroup()
    try:
        router = start_router(group, logdir, ROUTER_CONFIG)
        sim = start_sim_vllm(
            group, logdir, "--ttft-ms", "5", "--itl-ms", "2", name="sim-b", model=MODEL
        )
        fleet = Fleet(router, sim)
        fleet.register("b", sim.url)
        wait_until(
            lambda: requests.get(router.url + "/readyz", timeout=2).status_code == 200,
            timeout=10,
            what="router ready",
        )
        yield fleet
    finally:
        group.stop_all()


def continuation_text(fleet: Fleet, body: dict, sent: str, tokens: int) -> str:
    """What the simulator generates when asked to continue ``sent`` (its text is deterministic)."""
    cont = {**body, "prompt": body["prompt"] + sent, "max_tokens": body["max_tokens"] - tokens}
    return stream(fleet.sim.url, COMPLETIONS, cont).text


@pytest.mark.parametrize("done", [True, False], ids=["done_event", "end_of_body"])
def test_truncated_stream_is_resumed_with_exact_text(fleet: Fleet, done: bool) -> None:
    body = body_for(COMPLETIONS, usage=False)
    with fake_engine(Script(PIECES, finish=None, done=done)) as engine:
        fleet.register("a", engine.url)
        before = fleet.breaks("truncated")
        got = stream(fleet.router.url, COMPLETIONS, body, fleet.session_for("a"))
    assert got.node == "a" and got.done and not got.errors
    sent = "".join(PIECES)
    assert got.text == sent + continuation_text(fleet, body, sent, len(PIECES))
    assert got.finishes == ["length"]
    assert {c["id"] for c in got.chunks} == {"cmpl-fake"}
    assert fleet.breaks("truncated") == before + 1


def test_truncated_stream_without_resume_ends_with_error_event(fleet: Fleet) -> None:
    headers = {**fleet.session_for("a"), RESUME_HEADER: "off"}
    with fake_engine(Script(PIECES, finish=None)) as engine:
        fleet.register("a", engine.url)
        before = fleet.breaks("truncated")
        got = stream(fleet.router.url, COMPLETIONS, body_for(COMPLETIONS, usage=False), headers)
    assert got.text == "".join(PIECES) and got.finishes == []
    assert got.done and len(got.errors) == 1
    assert got.errors[0]["code"] == "upstream_stream_broken"
    assert "truncated" in got.errors[0]["message"]
    assert fleet.breaks("truncated") == before + 1


def test_finished_stream_passes_unchanged(fleet: Fleet) -> None:
    """A stream whose choice finished is complete: no break, no rewrite."""
    with fake_engine(Script(PIECES, finish="stop")) as engine:
        fleet.register("a", engine.url)
        before = fleet.breaks("truncated")
        got = stream(
            fleet.router.url,
            COMPLETIONS,
            body_for(COMPLETIONS, usage=False),
            fleet.session_for("a"),
        )
    assert got.text == "".join(PIECES) and got.finishes == ["stop"] and not got.errors
    assert len(engine.bodies) == 1
    assert fleet.breaks("truncated") == before
