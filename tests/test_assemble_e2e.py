"""Non-streaming answers assembled from streams, end to end (``routing.assemble_non_streaming``).

Router under gunicorn, ``spotrelay sim vllm`` nodes registered as vLLM. The
simulator's text is a function of the prompt alone, so the engine's own
non-streaming answer (asked directly) is the reference: the router's
assembled answer must equal it field for field, with only ``id`` and
``created`` (each generation's own) allowed to differ. A broken or frozen
generation must still give that answer (resumed on another node).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import running
from tests.support.resume_fleet import (
    CHAT,
    COMPLETIONS,
    ROUTER_CONFIG,
    Fleet,
    running_fleet,
    start_fleet,
)
from tests.support.resume_fleet import body_for as stream_body_for

ASSEMBLE = {**ROUTER_CONFIG["routing"], "assemble_non_streaming": ["vllm"]}


@pytest.fixture(scope="module")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    sim_args = ("--ttft-ms", "5", "--itl-ms", "2", "--max-model-len", "65536")
    logdir = tmp_path_factory.mktemp("assemble-e2e")
    with running_fleet(logdir, ["a", "b"], *sim_args, routing=ASSEMBLE) as fleet:
        yield fleet


@pytest.fixture
def fleet(shared_fleet: Fleet) -> Fleet:
    """The module's two-node fleet, faults cleared."""
    shared_fleet.reset()
    return shared_fleet


def body_for(path: str, **extra: Any) -> dict[str, Any]:
    """A non-streaming body (``max_tokens`` absent unless given: the engine's default)."""
    return stream_body_for(path, usage=False, stream=False, **{"max_tokens": None, **extra})


def post(url: str, path: str, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(url + path, json=body, headers=headers, timeout=60)


def without_identity(doc: dict[str, Any]) -> dict[str, Any]:
    """The answer minus what every generation makes up anew (its id and timestamp)."""
    return {k: v for k, v in doc.items() if k not in ("id", "created")}


def assert_same_answer(assembled: requests.Response, direct: requests.Response) -> None:
    """Field for field: status, media type, every key and value but id and created.

    (The router answers ``application/json`` as vLLM's FastAPI server does; the
    simulator's aiohttp adds ``; charset=utf-8``, which JSON, always UTF-8, ignores.)
    """
    assert assembled.status_code == direct.status_code == 200, assembled.text
    media = assembled.headers["Content-Type"].split(";")[0]
    assert media == direct.headers["Content-Type"].split(";")[0] == "application/json"
    got, want = assembled.json(), direct.json()
    assert list(got) == list(want)
    assert without_identity(got) == without_identity(want)
    assert got["id"].startswith("chatcmpl-" if want["object"] == "chat.completion" else "cmpl-")
    assert isinstance(got["created"], int) and abs(got["created"] - want["created"]) < 60


def streamed_by(node_url: str) -> list[bool]:
    """Whether each recent request on a simulator node came as a stream."""
    stats = requests.get(node_url + "/_control/stats", timeout=5).json()
    return [r["stream"] for r in stats["recent"]]


MATRIX = {
    "plain": {"max_tokens": 24},
    "length": {"max_tokens": 3},
    "default_max_tokens": {},
    "stop": {"max_tokens": 60, "stop": [" the", " of"]},
    "stop_included": {"max_tokens": 60, "stop": [" the"], "include_stop_str_in_output": True},
    "seed": {"max_tokens": 16, "seed": 7, "temperature": 0.8},
}


@pytest.mark.parametrize("case", sorted(MATRIX))
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_assembled_answer_equals_the_engines_own(fleet: Fleet, path: str, case: str) -> None:
    body = body_for(path, **MATRIX[case])
    direct = post(fleet.nodes["a"].url, path, body)
    assembled = post(fleet.router.url, path, body, **{"X-Session-ID": fleet.session_for("a")})
    assert_same_answer(assembled, direct)
    assert streamed_by(fleet.nodes["a"].url)[-2:] == [False, True]  # direct, then via the router


def test_what_the_engine_refuses_is_its_own_answer(fleet: Fleet) -> None:
    """n > 1 (the simulator serves n = 1 only) and a bad max_tokens: the engine's 400s."""
    for body in (body_for(CHAT, n=2), body_for(COMPLETIONS, max_tokens=0)):
        path = CHAT if "messages" in body else COMPLETIONS
        direct, routed = post(fleet.nodes["a"].url, path, body), post(fleet.router.url, path, body)
        assert routed.status_code == direct.status_code == 400
        assert routed.json() == direct.json()


def test_requests_that_cannot_be_assembled_go_as_they_came(fleet: Fleet) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    body = body_for(COMPLETIONS, max_tokens=8, echo=True)
    direct = post(fleet.nodes["a"].url, COMPLETIONS, body)
    routed = post(fleet.router.url, COMPLETIONS, body, **session)
    assert without_identity(routed.json()) == without_identity(direct.json())
    assert streamed_by(fleet.nodes["a"].url)[-1] is False


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT], ids=["completions", "chat"])
@pytest.mark.parametrize("k", [0, 1, 5])
def test_broken_generation_resumes_to_the_same_answer(fleet: Fleet, path: str, k: int) -> None:
    """The node drops the connection after k tokens: the answer is resumed on the other node
    (a completions stream dropped before its first event is an ordinary retry there)."""
    body = body_for(path, max_tokens=20, stop=[" river"])
    direct = post(fleet.nodes["b"].url, path, body)
    outcome = "complete" if k == 0 and path == COMPLETIONS else "resumed"
    before = fleet.metric("spotrelay_router_assembled_total", outcome=outcome)
    fleet.fault("a", drop_after_tokens=k, drop_count=1)
    assembled = post(fleet.router.url, path, body, **{"X-Session-ID": fleet.session_for("a")})
    assert_same_answer(assembled, direct)
    began = "a" if outcome == "resumed" else "b"
    assert assembled.headers["X-Spotrelay-Node"] == began  # the node whose stream was read
    assert fleet.metric("spotrelay_router_assembled_total", outcome=outcome) == before + 1


def test_broken_beyond_resume_is_an_openai_error_never_a_truncated_body(fleet: Fleet) -> None:
    """Every node drops every stream: a 502 in OpenAI's shape after the retries."""
    for name in fleet.nodes:
        fleet.fault(name, drop_after_tokens=2)
    failed = fleet.metric("spotrelay_router_assembled_total", outcome="failed")
    resp = post(fleet.router.url, COMPLETIONS, body_for(COMPLETIONS, max_tokens=20))
    assert resp.status_code == 502
    err = resp.json()["error"]
    assert err["code"] == "upstream_stream_broken" and err["message"]
    assert fleet.metric("spotrelay_router_assembled_total", outcome="failed") == failed + 1


def test_openai_client_reads_the_assembled_answer(fleet: Fleet) -> None:
    fleet.fault("a", drop_after_tokens=4, drop_count=1)
    client = openai.OpenAI(base_url=fleet.router.url + "/v1", api_key="x", max_retries=0)
    body = body_for(CHAT, max_tokens=12)
    got = client.chat.completions.create(
        **body, extra_headers={"X-Session-ID": fleet.session_for("a")}
    )
    want = post(fleet.nodes["b"].url, CHAT, body).json()
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert got.usage is not None
    assert got.usage.model_dump(exclude_none=True) == want["usage"]


# ---------------------------------------------------------------------------
# Real processes: the node generating the answer is SIGKILLed or frozen


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_node_killed_or_frozen_mid_generation(procs: ProcessGroup, logdir: Path, sig: int) -> None:
    """~2 s of generation; the node dies (or freezes) part-way: the answer still completes,
    equal to an undisturbed one. A frozen node is noticed by the stream's idle timeout."""
    fleet = start_fleet(
        procs,
        logdir,
        ["x", "y"],
        "--ttft-ms",
        "20",
        "--itl-ms",
        "25",
        routing=ASSEMBLE,
        timeouts={"stream_idle_s": 1},
    )
    body = body_for(COMPLETIONS, max_tokens=80)
    direct = post(fleet.nodes["y"].url, COMPLETIONS, body)
    out: dict[str, requests.Response | BaseException] = {}
    victim, session = fleet.nodes["x"], fleet.session_for("x")

    def ask_x() -> None:
        try:
            out["resp"] = post(fleet.router.url, COMPLETIONS, body, **{"X-Session-ID": session})
        except BaseException as exc:  # reported below
            out["resp"] = exc

    thread = threading.Thread(target=ask_x, daemon=True)
    thread.start()

    def generating() -> bool:
        stats = requests.get(victim.url + "/_control/stats", timeout=5).json()
        return stats["engine"]["generation_tokens_total"] >= 10

    wait_until(generating, timeout=20, interval=0.02, what="tokens generated on node x")
    victim.proc.signal(sig)
    thread.join(60)
    if sig == signal.SIGSTOP:
        victim.proc.signal(signal.SIGCONT)
    assert not thread.is_alive()
    resp = out["resp"]
    assert isinstance(resp, requests.Response), resp
    assert_same_answer(resp, direct)
    assert fleet.metric("spotrelay_router_assembled_total", outcome="resumed") == 1


def test_client_leaving_aborts_the_generation(fleet: Fleet) -> None:
    """The client of an assembled answer hangs up: the node's generation is aborted."""
    node = fleet.nodes["a"]
    body = json.dumps(body_for(COMPLETIONS, max_tokens=30000)).encode()  # ~60 s at 2 ms a token
    host, port = fleet.router.url.removeprefix("http://").split(":")
    head = (
        f"POST {COMPLETIONS} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Session-ID: {fleet.session_for('a')}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    breaks = fleet.metric("spotrelay_router_stream_breaks_total", reason="reset")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        wait_until(lambda: running(node) == 1, timeout=15, what="generation on node a")
        before = fleet.metric("spotrelay_router_assembled_total", outcome="client_disconnect")
    wait_until(lambda: running(node) == 0, timeout=10, what="generation aborted")
    wait_until(
        lambda: (
            fleet.metric("spotrelay_router_assembled_total", outcome="client_disconnect")
            == before + 1
        ),
        timeout=10,
        what="client_disconnect counted",
    )
    # The router ended it for the client: not a break, not the node's failure.
    assert fleet.metric("spotrelay_router_stream_breaks_total", reason="reset") == breaks
