"""The whole vLLM API through the router: Responses, tokenize, scoring, uploads, refusals.

Real parts only: the router under gunicorn, ``spotrelay sim vllm`` nodes
(whose text is deterministic, so a Responses answer must equal the chat
answer to the same messages), the official ``openai`` client where it has
the call, and for audio uploads a small HTTP engine that records the bytes
it receives.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from spotrelay.router.stream.sse import SSEParser
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import HOST, ROUTER_TOKEN, register_node, scrape, start_router
from tests.support.resume_fleet import MODEL, Fleet, start_fleet

SIM_ARGS = ("--ttft-ms", "5", "--itl-ms", "2")


@pytest.fixture(scope="module")
def shared_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    group = ProcessGroup()
    try:
        yield start_fleet(group, tmp_path_factory.mktemp("endpoints"), ["a", "b"], *SIM_ARGS)
    finally:
        group.stop_all()


@pytest.fixture
def fleet(shared_fleet: Fleet) -> Fleet:
    """The module's two-node fleet, faults cleared."""
    shared_fleet.reset()
    return shared_fleet


def client_for(fleet: Fleet, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=fleet.router.url + "/v1", api_key="unused", max_retries=0,
        default_headers=headers or None, timeout=30,
    )  # fmt: skip


def chat_text(fleet: Fleet, messages: list[dict[str, str]], max_tokens: int) -> str:
    """What the deterministic model answers to ``messages`` (through chat completions)."""
    done = client_for(fleet).chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens
    )
    return done.choices[0].message.content or ""


# ---------------------------------------------------------------------------
# Responses API


def test_responses_non_streaming_is_the_models_answer(fleet: Fleet) -> None:
    client = client_for(fleet)
    resp = client.responses.create(
        model=MODEL, instructions="Be brief.", input="Where is the harbor?", max_output_tokens=12
    )
    expected = chat_text(
        fleet,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is the harbor?"},
        ],
        12,
    )
    assert resp.output_text == expected and expected
    assert resp.usage is not None and resp.usage.output_tokens == 12
    assert resp.status == "incomplete"  # max_output_tokens ended it: the sim never stops


def test_responses_streaming_relays_every_event(fleet: Fleet) -> None:
    client = client_for(fleet)
    events = list(
        client.responses.create(
            model=MODEL, input="Tell a story.", max_output_tokens=20, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == chat_text(fleet, [{"role": "user", "content": "Tell a story."}], 20)
    assert events[-1].response.output_text == text


def test_responses_body_without_model_goes_to_the_only_model(fleet: Fleet) -> None:
    resp = requests.post(
        fleet.router.url + "/v1/responses", json={"input": "hi", "max_output_tokens": 3}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == MODEL and resp.headers["X-Spotrelay-Node"] in ("a", "b")


def test_responses_stream_broken_mid_way_ends_with_an_error_event(fleet: Fleet) -> None:
    for node in fleet.nodes:
        fleet.fault(node, drop_after_tokens=3)
    before = fleet.metric("spotrelay_router_stream_breaks_total")
    client = client_for(fleet)
    events = list(
        client.responses.create(model=MODEL, input="Break me.", max_output_tokens=30, stream=True)
    )
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3
    last = events[-1]
    assert last.type == "error" and last.code == "upstream_stream_broken"
    assert "output incomplete" in last.message
    assert last.sequence_number == events[-2].sequence_number + 1
    assert not any(e.type == "response.completed" for e in events)
    wait_until(
        lambda: fleet.metric("spotrelay_router_stream_breaks_total") > before,
        timeout=10,
        what="the break counted",
    )


def test_responses_node_sigkilled_before_first_output_is_retried(
    procs: ProcessGroup, logdir: Path
) -> None:
    # Long prefill on both nodes: the client request lands on one, which dies during it.
    fleet = start_fleet(procs, logdir, ["x", "y"], "--ttft-ms", "2500", "--itl-ms", "2")
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            stream = client_for(fleet).responses.create(
                model=MODEL, input="Survive.", max_output_tokens=8, stream=True
            )
            result["events"] = list(stream)
        except Exception as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()

    busy: list[str] = []

    def prefilling() -> bool:
        for name, node in fleet.nodes.items():
            engine = requests.get(node.url + "/_control/stats", timeout=5).json()["engine"]
            if engine["running"] + engine["waiting"] > 0:
                busy.append(name)
                return True
        return False

    wait_until(prefilling, timeout=20, interval=0.02, what="a node prefilling")
    victim = busy[0]
    fleet.nodes[victim].proc.signal(signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    events = result["events"]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == chat_text(
        fleet, [{"role": "user", "content": "Survive."}], 8
    )
    retries = scrape(fleet.router.control_url + "/metrics", "spotrelay_router_retries_total")
    assert retries >= 1


def anthropic_stream(fleet: Fleet) -> list:
    body = {"model": MODEL, "max_tokens": 12, "stream": True,
            "messages": [{"role": "user", "content": "Hello"}]}  # fmt: skip
    resp = requests.post(fleet.router.url + "/v1/messages", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    return SSEParser().feed(resp.content)


def test_anthropic_messages_stream_and_its_break(fleet: Fleet) -> None:
    events = anthropic_stream(fleet)
    assert events[0].event == "message_start" and events[-1].event == "message_stop"
    text = "".join(e.json()["delta"]["text"] for e in events if e.event == "content_block_delta")
    assert text == chat_text(fleet, [{"role": "user", "content": "Hello"}], 12)
    for node in fleet.nodes:
        fleet.fault(node, drop_after_tokens=4)
    events = anthropic_stream(fleet)
    assert [e.event for e in events].count("content_block_delta") == 4
    assert events[-1].event == "error" and events[-1].json()["error"]["type"] == "api_error"


# ---------------------------------------------------------------------------
# Tokenizer and scoring


def post(fleet: Fleet, path: str, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(fleet.router.url + path, json=body, headers=headers, timeout=30)


def test_tokenize_on_one_node_detokenizes_on_another(fleet: Fleet) -> None:
    text = "The spot node said: Bonjour, wörld!"
    on_a = {"X-Session-ID": fleet.session_for("a")}
    on_b = {"X-Session-ID": fleet.session_for("b")}
    tok = post(fleet, "/tokenize", {"model": MODEL, "prompt": text}, **on_a)
    assert tok.status_code == 200 and tok.headers["X-Spotrelay-Node"] == "a"
    ids = tok.json()["tokens"]
    assert tok.json()["count"] == len(ids) > 5
    detok = post(fleet, "/detokenize", {"model": MODEL, "tokens": ids}, **on_b)
    assert detok.status_code == 200 and detok.headers["X-Spotrelay-Node"] == "b"
    assert detok.json()["prompt"] == text


def test_rerank_and_score_agree(fleet: Fleet) -> None:
    docs = ["a quiet harbor", "the engine of the market", "harbor lights at night"]
    rerank = post(fleet, "/v1/rerank", {"model": MODEL, "query": "harbor", "documents": docs})
    assert rerank.status_code == 200, rerank.text
    results = rerank.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for path in ("/v1/score", "/score"):
        score = post(fleet, path, {"model": MODEL, "text_1": "harbor", "text_2": docs})
        assert score.status_code == 200, score.text
        by_index = {d["index"]: d["score"] for d in score.json()["data"]}
        assert {r["index"]: r["relevance_score"] for r in results} == by_index
    again = post(fleet, "/v2/rerank", {"query": "harbor", "documents": docs, "top_n": 1})
    assert again.status_code == 200 and again.json()["results"] == results[:1]


# ---------------------------------------------------------------------------
# GET endpoints and paths outside the list


def test_version_is_answered_by_a_ready_node(fleet: Fleet) -> None:
    resp = requests.get(fleet.router.url + "/version", timeout=10)
    assert resp.status_code == 200 and resp.json()["version"].endswith("spotrelay.sim")
    assert resp.headers["X-Spotrelay-Node"] in fleet.nodes
    models = client_for(fleet).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_admin_and_unknown_paths_get_their_documented_answers(fleet: Fleet) -> None:
    resp = requests.post(fleet.router.url + "/reset_prefix_cache", timeout=10)
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["code"] == "unsupported_endpoint" and "admin endpoint" in err["message"]
    stored = requests.get(fleet.router.url + "/v1/responses/resp_123", timeout=10)
    assert stored.status_code == 404  # asked on every node; none stores responses
    unknown = requests.post(fleet.router.url + "/v1/nope", json={}, timeout=10)
    assert unknown.status_code == 404 and "no such endpoint" in unknown.json()["error"]["message"]
    client = client_for(fleet)
    with pytest.raises(openai.PermissionDeniedError):
        client.post(fleet.router.url + "/reset_prefix_cache", cast_to=object, body={})


# ---------------------------------------------------------------------------
# Multipart uploads


class RecordingEngine(ThreadingHTTPServer):
    """A node that answers transcriptions with the SHA-256 of the body it received."""

    def __init__(self) -> None:
        super().__init__((HOST, 0), _RecordingHandler)
        self.received: list[tuple[str, bytes]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingEngine

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.headers.get("Content-Type", ""), body))
        answer = json.dumps({"text": hashlib.sha256(body).hexdigest()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upload_router(procs: ProcessGroup, logdir: Path) -> Iterator[tuple[str, RecordingEngine]]:
    engine = RecordingEngine()
    engine.thread.start()
    try:
        router = start_router(procs, logdir, {"routing": {"max_body_bytes": 1_000_000}})
        register_node(router.control_url, ROUTER_TOKEN, "whisper-1", engine.url, "whisper")
        yield router.url, engine
    finally:
        engine.shutdown()
        engine.server_close()


def test_multipart_upload_is_forwarded_byte_identical(upload_router) -> None:
    url, engine = upload_router
    audio = bytes(range(256)) * 2000  # 512 KB of every byte value, CRLFs and dashes included
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    result = client.audio.transcriptions.create(
        model="whisper", file=("clip.wav", audio, "audio/wav"), language="en"
    )
    content_type, body = engine.received[-1]
    assert result.text == hashlib.sha256(body).hexdigest()
    assert content_type.startswith("multipart/form-data; boundary=")
    assert audio in body and b'name="model"\r\n\r\nwhisper\r\n' in body
    # The same upload without a model field goes to the only model.
    boundary = "sr-test-boundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + audio
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = requests.post(
        url + "/v1/audio/translations", data=form, timeout=30,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert engine.received[-1][1] == form


def test_multipart_upload_over_the_limit_is_413(upload_router) -> None:
    url, engine = upload_router
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper", file=("big.wav", b"\0" * 1_200_000))
    assert info.value.status_code == 413
    assert info.value.body["code"] == "body_too_large"  # type: ignore[index]
    assert engine.received == []
