"""Stream resume end to end: router under gunicorn, ``spotrelay sim vllm`` nodes, real faults.

The simulator's text is deterministic (each token a function of the text
before it), so a stream broken by ``drop_after_tokens`` on node A and resumed
on node B must give the client exactly what an unbroken stream gives: same
text, same final usage, one id, one finish. Session affinity (rendezvous
hashing on ``X-Session-ID``) steers the first attempt to the faulty node; the
continuation excludes it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from spotrelay.router.stream.resume_request import RESUME_HEADER
from spotrelay.router.stream.sse import SSEParser
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import (
    ROUTER_TOKEN,
    register_node,
    running,
    start_sim_vllm,
)
from tests.support.resume_fleet import (
    CHAT,
    COMPLETIONS,
    MODEL,
    VLLM,
    Fleet,
    Result,
    body_for,
    start_fleet,
    stream,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logdir = tmp_path_factory.mktemp("resume-e2e")
    group = ProcessGroup()
    try:
        yield start_fleet(
            group, logdir, ["a", "b"], "--ttft-ms", "5", "--itl-ms", "2", "--max-model-len", "65536"
        )
    finally:
        group.stop_all()


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    if "fleet" in request.fixturenames:
        request.getfixturevalue("fleet").reset()
    yield


def assert_coherent(res: Result, path: str, usage: bool) -> None:
    assert res.done and not res.errors
    assert len({c["id"] for c in res.chunks}) == 1
    assert len({c["created"] for c in res.chunks}) == 1
    assert {c["model"] for c in res.chunks} == {MODEL}
    assert len(res.finishes) == 1
    assert res.roles == (1 if path == CHAT else 0)
    assert len(res.usage) == (1 if usage else 0)


# ---------------------------------------------------------------------------
# Broken and resumed == unbroken


@pytest.mark.parametrize("usage", [False, True], ids=["no_usage", "usage"])
@pytest.mark.parametrize("path", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_resumed_stream_equals_unbroken_stream(fleet: Fleet, path: str, usage: bool) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    body = body_for(path, usage=usage)
    ref = stream(fleet.router.url, path, body, session)
    assert_coherent(ref, path, usage)
    assert ref.node == "a" and ref.finishes == ["length"]
    resumed = fleet.metric("spotrelay_router_stream_resumes_total", outcome="ok")
    for k in (0, 1, 7, 15, 16):  # 16 = after the last token, before the finish chunk
        fleet.fault("a", drop_after_tokens=k, drop_count=1)
        got = stream(fleet.router.url, path, body, session)
        assert_coherent(got, path, usage)
        assert got.text == ref.text, f"k={k}"
        assert got.finishes == ref.finishes, f"k={k}"
        assert got.usage == ref.usage, f"k={k}"
    # k=1, 7, 15 (and 0 for chat, whose role chunk went out) were resumed on node b;
    # k=16 needs no new tokens (only, with usage, a one-token probe for the prompt size);
    # completions k=0 is a plain retry: nothing had reached the client.
    now = fleet.metric("spotrelay_router_stream_resumes_total", outcome="ok")
    assert now - resumed == (5 if path == CHAT else 4)


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_continuous_usage_stats_are_restated(fleet: Fleet, path: str) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    body = body_for(path, usage=True)
    body["stream_options"]["continuous_usage_stats"] = True
    ref = stream(fleet.router.url, path, body, session)
    for k in (0, 6):
        fleet.fault("a", drop_after_tokens=k, drop_count=1)
        got = stream(fleet.router.url, path, body, session)
        assert got.text == ref.text and got.finishes == ref.finishes
        assert got.usage[-1] == ref.usage[-1]
        # every chunk's running usage reads as if nothing had broken
        assert [u for u in got.usage if u] == [u for u in ref.usage if u][-len(got.usage) :]


@pytest.mark.parametrize("path", [COMPLETIONS, CHAT], ids=["completions", "chat"])
def test_stop_string_spanning_the_seam(fleet: Fleet, path: str) -> None:
    """The stop string straddles the boundary between the token the node died after
    and the next one, so only the continuation's node can complete it."""
    session = {"X-Session-ID": fleet.session_for("a")}
    free = stream(fleet.router.url, path, body_for(path, usage=False, max_tokens=24), session)
    pieces = [
        c["choices"][0].get("text") or c["choices"][0].get("delta", {}).get("content") or ""
        for c in free.chunks
    ]
    pieces = [p for p in pieces if p]
    j = next(i for i in range(8, len(pieces) - 1) if len(pieces[i]) >= 3)
    stop = pieces[j][-2:] + pieces[j + 1][:2]
    assert stop not in "".join(pieces[: j + 1])
    body = body_for(path, usage=True, max_tokens=24, stop=[stop])
    ref = stream(fleet.router.url, path, body, session)
    assert ref.finishes == ["stop"] and stop not in ref.text
    assert ref.text == "".join(pieces)[: "".join(pieces).index(stop)]
    for k in (j - 1, j, j + 1):
        fleet.fault("a", drop_after_tokens=k, drop_count=1)
        got = stream(fleet.router.url, path, body, session)
        assert_coherent(got, path, True)
        assert (got.text, got.finishes, got.usage) == (ref.text, ref.finishes, ref.usage), k


def test_openai_client_consumes_a_resumed_stream(fleet: Fleet) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    client = openai.OpenAI(base_url=fleet.router.url + "/v1", api_key="unused", max_retries=0)

    def complete() -> tuple[str, Any]:
        text, usage = "", None
        for chunk in client.completions.create(
            model=MODEL,
            prompt="Resume me",
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=session,
        ):
            text += "".join(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        return text, usage

    def chat() -> tuple[str, Any]:
        text, usage = "", None
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Resume me"}],
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=session,
        ):
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        return text, usage

    for run in (complete, chat):
        ref_text, ref_usage = run()
        fleet.fault("a", drop_after_tokens=9, drop_count=1)
        text, usage = run()
        assert text == ref_text and len(text) > 20
        assert usage.model_dump() == ref_usage.model_dump()


# ---------------------------------------------------------------------------
# When resume cannot help


def test_no_node_left_ends_with_error_event_then_done(fleet: Fleet) -> None:
    """Both nodes break: the second continuation waits for a node it has not tried
    (routing.no_capacity_wait_s), none comes, the stream ends with the error event."""
    session = {"X-Session-ID": fleet.session_for("a")}
    before = fleet.metric("spotrelay_router_stream_resumes_total", outcome="no_capacity")
    for node in ("a", "b"):
        fleet.fault(node, drop_after_tokens=3, drop_count=1)
    got = stream(fleet.router.url, COMPLETIONS, body_for(COMPLETIONS, usage=True), session)
    assert got.done and len(got.errors) == 1
    assert got.errors[0]["type"] == "server_error"
    assert got.errors[0]["code"] == "upstream_stream_broken"
    assert got.finishes == [] and got.usage == []
    assert len(got.text) > 0  # what was streamed stays; nothing duplicated
    after = fleet.metric("spotrelay_router_stream_resumes_total", outcome="no_capacity")
    assert after == before + 1

    # The official client raises the in-stream error instead of ending quietly.
    client = openai.OpenAI(base_url=fleet.router.url + "/v1", api_key="unused", max_retries=0)
    for node in ("a", "b"):
        fleet.fault(node, drop_after_tokens=3, drop_count=1)
    with pytest.raises(openai.APIError):
        for _ in client.completions.create(
            model=MODEL, prompt="x", max_tokens=16, stream=True, extra_headers=session
        ):
            pass


def test_disabled_by_header_falls_back_to_error_event(fleet: Fleet) -> None:
    session = {"X-Session-ID": fleet.session_for("a"), RESUME_HEADER: "off"}
    before = fleet.metric("spotrelay_router_stream_resumes_total", outcome="disabled")
    fleet.fault("a", drop_after_tokens=4, drop_count=1)
    got = stream(fleet.router.url, CHAT, body_for(CHAT, usage=False), session)
    assert got.done and len(got.errors) == 1 and got.finishes == []
    assert fleet.metric("spotrelay_router_stream_resumes_total", outcome="disabled") == before + 1


def test_not_resumable_request_falls_back_to_error_event(fleet: Fleet) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    before = fleet.metric("spotrelay_router_stream_resumes_total", outcome="not_resumable")
    fleet.fault("a", drop_after_tokens=4, drop_count=1)
    body = body_for(COMPLETIONS, usage=False, echo=True)  # the echoed prompt can't be re-sent
    got = stream(fleet.router.url, COMPLETIONS, body, session)
    assert got.done and len(got.errors) == 1 and got.finishes == []
    assert got.text.startswith(body["prompt"])
    after = fleet.metric("spotrelay_router_stream_resumes_total", outcome="not_resumable")
    assert after == before + 1


def test_resume_metrics_are_exported(fleet: Fleet) -> None:
    session = {"X-Session-ID": fleet.session_for("a")}
    ok = fleet.metric("spotrelay_router_stream_resumes_total", outcome="ok")
    tokens = fleet.metric("spotrelay_router_resumed_tokens_total")
    seams = fleet.metric("spotrelay_router_resume_seam_seconds_count")
    fleet.fault("a", drop_after_tokens=5, drop_count=1)
    got = stream(fleet.router.url, COMPLETIONS, body_for(COMPLETIONS, usage=False), session)
    assert got.done and not got.errors
    assert fleet.metric("spotrelay_router_stream_resumes_total", outcome="ok") == ok + 1
    assert fleet.metric("spotrelay_router_resumed_tokens_total") == tokens + 5
    assert fleet.metric("spotrelay_router_resume_seam_seconds_count") == seams + 1


def test_client_leaving_during_a_continuation_aborts_it(fleet: Fleet) -> None:
    """Closing the client connection after the seam frees the continuation's slot."""
    session = {"X-Session-ID": fleet.session_for("a")}
    fleet.fault("a", drop_after_tokens=3, drop_count=1)
    # ~60 s at 2 ms a token: the continuation is still running whatever the machine's load.
    body = body_for(COMPLETIONS, usage=False, max_tokens=30000)
    resp = requests.post(
        fleet.router.url + COMPLETIONS, json=body, headers=session, stream=True, timeout=30
    )
    parser, texts = SSEParser(), []
    # Keep a reference to the iterator: a dropped one is finalised at once, and
    # finalising it closes the connection before the test means to.
    pieces = resp.iter_content(chunk_size=None)
    for piece in pieces:
        texts += [e.json()["choices"][0]["text"] for e in parser.feed(piece)]
        if len(texts) >= 10:  # well past the seam at 3
            break
    assert resp.headers["X-Spotrelay-Node"] == "a"
    wait_until(lambda: running(fleet.nodes["b"]) == 1, timeout=15, what="continuation on b")
    resp.close()
    del pieces
    wait_until(lambda: running(fleet.nodes["b"]) == 0, timeout=10, what="b idle")


def test_continuation_waits_for_a_replacement_node(procs: ProcessGroup, logdir: Path) -> None:
    """The only node breaks mid-stream; a new node registers 2 s later; the stream completes."""
    fleet = start_fleet(
        procs, logdir, ["a"], "--ttft-ms", "5", "--itl-ms", "2", routing={"no_capacity_wait_s": 20}
    )
    spare = start_sim_vllm(
        procs, logdir, "--ttft-ms", "5", "--itl-ms", "2", name="sim-b", model=MODEL
    )
    body = body_for(COMPLETIONS, usage=True, max_tokens=24)
    ref = stream(fleet.nodes["a"].url, COMPLETIONS, body)
    served = fleet.metric("spotrelay_router_capacity_waits_total", outcome="served")
    fleet.fault("a", drop_after_tokens=5, drop_count=1)
    timeline: dict[str, float] = {}

    def replace_node() -> None:
        wait_until(
            lambda: fleet.metric("spotrelay_router_stream_breaks_total", reason="reset") >= 1,
            timeout=20,
            interval=0.02,
            what="the stream broke",
        )
        timeline["broke"] = time.monotonic()
        time.sleep(2)  # the replacement's boot, as the scenario has it (not a synchronisation)
        register_node(fleet.router.control_url, ROUTER_TOKEN, "b", spare.url, MODEL, engine=VLLM)
        timeline["registered"] = time.monotonic()

    helper = threading.Thread(target=replace_node)
    helper.start()
    try:
        got = stream(fleet.router.url, COMPLETIONS, body)
    finally:
        helper.join(timeout=30)
    assert got.node == "a" and "registered" in timeline
    assert_coherent(got, COMPLETIONS, True)
    assert (got.text, got.finishes, got.usage) == (ref.text, ref.finishes, ref.usage)
    assert fleet.metric("spotrelay_router_stream_resumes_total", outcome="ok") == 1
    assert fleet.metric("spotrelay_router_capacity_waits_total", outcome="served") == served + 1


def test_continuation_without_capacity_ends_with_error_event(
    procs: ProcessGroup, logdir: Path
) -> None:
    fleet = start_fleet(
        procs, logdir, ["a"], "--ttft-ms", "5", "--itl-ms", "2", routing={"no_capacity_wait_s": 0.5}
    )
    fleet.fault("a", drop_after_tokens=5, drop_count=1)
    got = stream(fleet.router.url, COMPLETIONS, body_for(COMPLETIONS, usage=False))
    assert got.done and len(got.errors) == 1 and got.finishes == []
    assert fleet.metric("spotrelay_router_stream_resumes_total", outcome="no_capacity") == 1
    assert fleet.metric("spotrelay_router_capacity_waits_total", outcome="timed_out") >= 1


# ---------------------------------------------------------------------------
# A node SIGKILLed under load


def test_sigkilled_node_loses_no_stream(procs: ProcessGroup, logdir: Path) -> None:
    fleet = start_fleet(
        procs,
        logdir,
        ["x", "y", "z"],
        "--ttft-ms",
        "20",
        "--itl-ms",
        "15",
        health={"consecutive_failures": 3},  # the dead node gets ejected, as in production
    )
    n = 30
    bodies = []
    for i in range(n):
        path = CHAT if i % 2 else COMPLETIONS
        body = body_for(path, usage=bool(i % 3), max_tokens=60)
        if path == CHAT:
            body["messages"][-1]["content"] += f" ({i})"
        else:
            body["prompt"] += f" ({i})"
        bodies.append((path, body))
    results: list[Result | BaseException | None] = [None] * n
    refs: list[Result | BaseException | None] = [None] * n

    def client(i: int, url: str, out: list[Result | BaseException | None]) -> None:
        path, body = bodies[i]
        try:
            out[i] = stream(url, path, body)
        except BaseException as exc:  # reported below
            out[i] = exc

    threads = [
        threading.Thread(target=client, args=(i, fleet.router.url, results)) for i in range(n)
    ]
    for t in threads:
        t.start()

    def busy() -> bool:
        nodes = requests.get(
            fleet.router.control_url + "/nodes",
            headers={"Authorization": f"Bearer {ROUTER_TOKEN}"},
            timeout=5,
        ).json()
        return any(nd["id"] == "x" and nd["in_flight"] >= 5 for nd in nodes)

    wait_until(busy, timeout=20, interval=0.01, what="streams in flight on node x")
    time.sleep(0.2)  # let those streams get well past their first tokens
    fleet.nodes["x"].proc.signal(signal.SIGKILL)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    errors = [r for r in results if not isinstance(r, Result)]
    assert not errors, errors[:3]
    resumed = fleet.metric("spotrelay_router_stream_resumes_total", outcome="ok")
    assert resumed >= 5

    # Every stream is exactly what an unbroken one gives (replayed on a live node).
    replay = [
        threading.Thread(target=client, args=(i, fleet.nodes["y"].url, refs)) for i in range(n)
    ]
    for t in replay:
        t.start()
    for t in replay:
        t.join(timeout=60)
    for (path, body), res, ref in zip(bodies, results, refs, strict=True):
        assert isinstance(res, Result) and isinstance(ref, Result)
        assert_coherent(res, path, "stream_options" in body)
        assert (res.text, res.finishes, res.usage) == (ref.text, ref.finishes, ref.usage)
