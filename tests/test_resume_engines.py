"""Resume with engines that are not vLLM: truncated streams, and chat resume by capability.

Router under gunicorn; node ``a`` is a scripted engine over real HTTP that
ends its stream cleanly without a ``finish_reason`` (as llama.cpp's server
does when another request arrives), node ``b`` a ``spotrelay sim vllm``
registered as a llama.cpp engine (no ``continue_final_message``) unless a test
says otherwise. Session affinity steers the first attempt to ``a``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from spotrelay.router.registry.balancer import rendezvous_weight
from spotrelay.router.stream.resume_request import RESUME_HEADER
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import ROUTER_TOKEN, Service, register_node, scrape, start_router, start_sim_vllm
from tests.support.fake_engine import Script, fake_engine
from tests.support.resume_fleet import (
    CHAT,
    COMPLETIONS,
    MODEL,
    ROUTER_CONFIG,
    VLLM,
    body_for,
    stream,
)

LLAMA_CPP = {"kind": "llama.cpp", "version": "0.3.16", "capabilities": []}
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
            self.router.control_url + "/metrics",
            "spotrelay_router_stream_breaks_total",
            reason=reason,
        )

    def resumes(self, outcome: str) -> float:
        return scrape(
            self.router.control_url + "/metrics",
            "spotrelay_router_stream_resumes_total",
            outcome=outcome,
        )

    def register(
        self, node_id: str, url: str, engine: dict | None = None, model: str = MODEL
    ) -> None:
        register_node(
            self.router.control_url, ROUTER_TOKEN, node_id, url, model, engine=engine or VLLM
        )


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
        fleet.register("b", sim.url, LLAMA_CPP)
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


def test_chat_resumes_only_on_a_node_that_continues_final_messages(fleet: Fleet) -> None:
    # A model no capable node ever served (one that had some waits for a capable
    # replacement instead): here only llama.cpp engines serve it.
    body = {**body_for(CHAT, usage=False), "model": "llama-only"}
    with fake_engine(Script(PIECES, finish=None)) as first, fake_engine(Script(["x"])) as other:
        fleet.register("a", first.url, LLAMA_CPP, model="llama-only")
        fleet.register("b", other.url, LLAMA_CPP, model="llama-only")
        before = fleet.resumes("not_resumable")
        try:
            got = stream(fleet.router.url, CHAT, body, fleet.session_for("a"))
        finally:
            fleet.register("b", fleet.sim.url, LLAMA_CPP)
    # No node can continue a chat answer: the stream ends with the error event,
    # and the llama.cpp node never saw a continuation it would have restarted.
    assert got.text == "".join(PIECES) and got.finishes == []
    assert got.done and len(got.errors) == 1
    assert "continue_final_message" in got.errors[0]["message"]
    assert other.bodies == []
    assert fleet.resumes("not_resumable") == before + 1


def test_chat_resumes_on_a_capable_node(fleet: Fleet) -> None:
    body = body_for(CHAT, usage=False)
    sent = "".join(PIECES)
    with fake_engine(Script(PIECES, finish=None)) as first:
        fleet.register("a", first.url)
        fleet.register("b", fleet.sim.url, VLLM)
        try:
            got = stream(fleet.router.url, CHAT, body, fleet.session_for("a"))
        finally:
            fleet.register("b", fleet.sim.url, LLAMA_CPP)
    assert got.done and not got.errors and got.roles == 1
    cont = {
        **body,
        "messages": [*body["messages"], {"role": "assistant", "content": sent}],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "max_tokens": body["max_tokens"] - len(PIECES),
    }
    assert got.text == sent + stream(fleet.sim.url, CHAT, cont).text
    assert got.finishes == ["length"]
