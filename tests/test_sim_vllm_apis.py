"""``spotrelay sim vllm``'s Responses API, tokenizer and scoring endpoints over real HTTP.

The Responses text must be the chat text for the same messages (the router's
tests rely on it), its stream must have vLLM's named-event framing, and the
drop fault must cut it like a chat stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import requests

from spotrelay.router.stream.sse import SSEParser
from spotrelay.sim import textgen
from spotrelay.sim.processes import ProcessGroup
from tests.support import Service, post_json, start_sim_vllm
from tests.support.sse import sse_events

MODEL = "sim-model"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    group = ProcessGroup()
    try:
        yield start_sim_vllm(group, tmp_path_factory.mktemp("sim-apis"), "--ttft-ms", "5",
                             "--itl-ms", "1")  # fmt: skip
    finally:
        group.stop_all()


@pytest.fixture(autouse=True)
def _reset(sim: Service) -> Iterator[None]:
    yield
    post_json(sim.url + "/_control/reset")


def expected(messages: list[dict], n: int) -> str:
    return "".join(textgen.generate(textgen.render_chat(messages), n))


def test_responses_text_is_the_chat_text(sim: Service) -> None:
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=10)
    resp = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}],
        max_output_tokens=9,
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert resp.output_text == expected(messages, 9)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.input_tokens == textgen.count_tokens(textgen.render_chat(messages))


def raw_events(sim: Service, body: dict) -> list:
    resp = requests.post(sim.url + "/v1/responses", json=body, stream=True, timeout=10)
    assert resp.status_code == 200
    return sse_events(resp, cut_ok=True)  # the drop fault cuts the connection mid-body


def test_responses_stream_has_vllms_named_event_framing(sim: Service) -> None:
    events = raw_events(
        sim, {"model": MODEL, "input": "Go", "max_output_tokens": 5, "stream": True}
    )
    assert all(e.event == e.json()["type"] for e in events)
    assert [e.event for e in events[:4]] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    assert [e.event for e in events[-4:]] == [
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    deltas = [e.json()["delta"] for e in events if e.event == "response.output_text.delta"]
    text = expected([{"role": "user", "content": "Go"}], 5)
    assert "".join(deltas) == text and len(deltas) == 5
    assert events[-1].json()["response"]["output"][0]["content"][0]["text"] == text
    assert [e.json()["sequence_number"] for e in events] == list(range(len(events)))


def test_drop_fault_cuts_a_responses_stream_after_that_many_deltas(sim: Service) -> None:
    post_json(sim.url + "/_control/faults", {"drop_after_tokens": 2})
    events = raw_events(
        sim, {"model": MODEL, "input": "Go", "max_output_tokens": 9, "stream": True}
    )
    kinds = [e.event for e in events]
    assert kinds.count("response.output_text.delta") == 2 and "response.completed" not in kinds


def test_tokenize_detokenize_rerank_score_and_their_errors(sim: Service) -> None:
    def post(path: str, body: dict) -> requests.Response:
        return requests.post(sim.url + path, json=body, timeout=10)

    tok = post("/tokenize", {"prompt": "Hello, world!", "return_token_strs": True}).json()
    assert tok["token_strs"] == ["Hello", ",", " world", "!"] and tok["count"] == 4
    assert post("/detokenize", {"tokens": tok["tokens"]}).json() == {"prompt": "Hello, world!"}
    chat = post("/tokenize", {"messages": [{"role": "user", "content": "x"}]}).json()
    assert chat["count"] == textgen.count_tokens(
        textgen.render_chat([{"role": "user", "content": "x"}])
    )
    rerank = post("/rerank", {"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1}).json()
    assert len(rerank["results"]) == 1 and 0 <= rerank["results"][0]["relevance_score"] <= 1
    score = post("/score", {"text_1": "q", "text_2": ["a", "b"]}).json()
    assert [d["index"] for d in score["data"]] == [0, 1]
    for path, body, param in [
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/tokenize", {"prompt": 3}, "prompt"),
        ("/v1/rerank", {"query": "q", "documents": []}, "documents"),
        ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_1"),
        ("/tokenize", {"model": "other", "prompt": "x"}, "model"),
    ]:
        resp = post(path, body)
        assert 400 <= resp.status_code < 500 and resp.json()["error"]["param"] == param, path


def test_anthropic_messages_text_and_stream(sim: Service) -> None:
    parts = [{"type": "text", "text": "Hi"}]
    body = {"model": MODEL, "system": "Be brief.", "max_tokens": 6,
            "messages": [{"role": "user", "content": parts}]}  # fmt: skip
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    done = requests.post(sim.url + "/v1/messages", json=body, timeout=10).json()
    assert done["content"][0]["text"] == expected(messages, 6)
    assert done["stop_reason"] == "max_tokens" and done["usage"]["output_tokens"] == 6
    resp = requests.post(sim.url + "/v1/messages", json={**body, "stream": True}, timeout=10)
    events = SSEParser().feed(resp.content)
    assert [e.event for e in events[:2]] == ["message_start", "content_block_start"]
    assert [e.event for e in events[-3:]] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e.json()["delta"]["text"] for e in events if e.event == "content_block_delta")
    assert text == done["content"][0]["text"]
    missing = requests.post(
        sim.url + "/v1/messages", json={"messages": body["messages"]}, timeout=10
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "max_tokens"
