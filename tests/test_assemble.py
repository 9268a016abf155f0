"""The assembler alone: vLLM-shaped chunks in, the non-streaming answer out (no I/O).

The streams below are written the way vLLM streams them (one chunk per token,
``logprobs`` per chunk with absolute ``text_offset``, tool-call deltas whose
first piece carries ``id``/``type``/``name``, one usage chunk last); each is
paired with the non-streaming answer vLLM gives for the same generation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spotrelay.core.config import ConfigError, load
from spotrelay.router.settings import RouterConfig
from spotrelay.router.stream.assemble import Assembler, NotAssembled, StreamForm, not_assembled
from spotrelay.router.stream.resume_request import CHAT, COMPLETIONS

HEAD = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "m"}
CHAT_HEAD = {**HEAD, "id": "chatcmpl-1", "object": "chat.completion.chunk"}
USAGE = {"prompt_tokens": 5, "total_tokens": 8, "completion_tokens": 3}


def completion_chunk(text: str, *, index: int = 0, finish: str | None = None, **kw: Any) -> dict:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
    choice.update(kw)
    return {**HEAD, "choices": [choice]}


def chat_chunk(delta: dict, *, index: int = 0, finish: str | None = None, **kw: Any) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    choice.update(kw)
    return {**CHAT_HEAD, "choices": [choice]}


def usage_chunk(head: dict = HEAD) -> dict:
    return {**head, "choices": [], "usage": USAGE}


def assemble(chat: bool, chunks: list[dict]) -> dict:
    asm = Assembler(chat)
    for chunk in chunks:
        asm.feed(json.loads(json.dumps(chunk)))
    body = json.loads(asm.body())
    assert body == asm.result()
    return body


def test_completion_text_finish_stop_reason_and_usage() -> None:
    chunks = [
        completion_chunk(" a", stop_reason=None),
        completion_chunk(" b", stop_reason=None),
        completion_chunk("", finish="stop", stop_reason=" c"),
        usage_chunk(),
    ]
    assert assemble(False, chunks) == {
        **HEAD,
        "choices": [
            {"index": 0, "text": " a b", "logprobs": None, "finish_reason": "stop",
             "stop_reason": " c"},
        ],
        "usage": USAGE,
    }  # fmt: skip


def test_chat_message_role_content_and_empty_tool_calls() -> None:
    chunks = [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Hi"}),
        chat_chunk({"content": " there"}),
        chat_chunk({}, finish="length", stop_reason=None),
        usage_chunk(CHAT_HEAD),
    ]
    assert assemble(True, chunks) == {
        **CHAT_HEAD,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there", "tool_calls": []},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": USAGE,
    }


def test_completion_logprobs_are_concatenated() -> None:
    def lp(token: str, offset: int, value: float) -> dict:
        return {
            "text_offset": [offset],
            "token_logprobs": [value],
            "tokens": [token],
            "top_logprobs": [{token: value, " z": -9.0}],
        }

    chunks = [
        completion_chunk(" a", logprobs=lp(" a", 0, -0.5)),
        completion_chunk(" bc", logprobs=lp(" bc", 2, -0.25)),
        completion_chunk("", finish="length", logprobs=None),
        usage_chunk(),
    ]
    choice = assemble(False, chunks)["choices"][0]
    assert choice["text"] == " a bc"
    assert choice["logprobs"] == {
        "text_offset": [0, 2],
        "token_logprobs": [-0.5, -0.25],
        "tokens": [" a", " bc"],
        "top_logprobs": [{" a": -0.5, " z": -9.0}, {" bc": -0.25, " z": -9.0}],
    }


def test_chat_logprobs_content_is_concatenated() -> None:
    def lp(token: str) -> dict:
        entry = {"token": token, "logprob": -1.0, "bytes": list(token.encode()), "top_logprobs": []}
        return {"content": [entry]}

    chunks = [
        chat_chunk({"role": "assistant", "content": ""}, logprobs=None),
        chat_chunk({"content": "A"}, logprobs=lp("A")),
        chat_chunk({"content": "B"}, logprobs=lp("B")),
        chat_chunk({}, finish="stop"),
    ]
    choice = assemble(True, chunks)["choices"][0]
    assert [e["token"] for e in choice["logprobs"]["content"]] == ["A", "B"]


def test_tool_calls_are_merged_by_index() -> None:
    def call(index: int, **kw: Any) -> dict:
        return {"tool_calls": [{"index": index, **kw}]}

    chunks = [
        chat_chunk({"role": "assistant", "content": None}),
        chat_chunk(
            call(0, id="call_1", type="function", function={"name": "get", "arguments": ""})
        ),
        chat_chunk(call(0, function={"arguments": '{"city": '})),
        chat_chunk(call(1, id="call_2", type="function", function={"name": "put"})),
        chat_chunk(call(0, function={"arguments": '"Oslo"}'})),
        chat_chunk(call(1, function={"arguments": "{}"})),
        chat_chunk({}, finish="tool_calls"),
    ]
    message = assemble(True, chunks)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "put", "arguments": "{}"}},
        ],
    }  # fmt: skip


def test_reasoning_content_is_kept_apart_from_content() -> None:
    chunks = [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"reasoning_content": "think "}),
        chat_chunk({"reasoning_content": "more"}),
        chat_chunk({"content": "answer"}),
        chat_chunk({}, finish="stop"),
    ]
    message = assemble(True, chunks)["choices"][0]["message"]
    assert message["content"] == "answer"
    assert message["reasoning_content"] == "think more"


def test_several_choices_interleaved_come_out_by_index() -> None:
    chunks = [
        completion_chunk("x", index=1),
        completion_chunk("a", index=0),
        completion_chunk("y", index=1, finish="length"),
        completion_chunk("b", index=0, finish="stop"),
        usage_chunk(),
    ]
    choices = assemble(False, chunks)["choices"]
    assert [(c["index"], c["text"], c["finish_reason"]) for c in choices] == [
        (0, "ab", "stop"),
        (1, "xy", "length"),
    ]


def test_system_fingerprint_is_kept_and_identity_is_the_first_chunks() -> None:
    chunks = [
        {**completion_chunk("a"), "system_fingerprint": "fp"},
        {**completion_chunk("", finish="stop"), "id": "other", "created": 1},
    ]
    body = assemble(False, chunks)
    assert (body["id"], body["created"], body["system_fingerprint"]) == (
        "cmpl-1",
        HEAD["created"],
        "fp",
    )
    assert "usage" not in body  # the engine sent none: nothing is made up


@pytest.mark.parametrize(
    "chunks",
    [[], [usage_chunk()], [completion_chunk("a")], [completion_chunk("a", index=1, finish="stop"),
                                                     completion_chunk("b")]],
    ids=["nothing", "usage_only", "never_finished", "one_of_two_unfinished"],
)  # fmt: skip
def test_an_unfinished_stream_is_not_an_answer(chunks: list[dict]) -> None:
    asm = Assembler(False)
    for chunk in chunks:
        asm.feed(chunk)
    with pytest.raises(NotAssembled):
        asm.result()


@given(st.lists(st.text(max_size=5), min_size=1, max_size=20), st.sampled_from(["stop", "length"]))
def test_any_split_of_a_text_assembles_to_it(pieces: list[str], finish: str) -> None:
    chunks = [completion_chunk(p) for p in pieces] + [completion_chunk("", finish=finish)]
    choice = assemble(False, chunks)["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("".join(pieces), finish)


# ---------------------------------------------------------------------------
# Which requests are assembled


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (COMPLETIONS, {"prompt": "p"}),
        (COMPLETIONS, {"prompt": ["p"], "logprobs": 2, "n": 2, "stop": ["x"], "seed": 1}),
        (CHAT, {"messages": [], "logprobs": True, "top_logprobs": 2, "max_tokens": 5}),
        (CHAT, {"messages": [], "tools": [{"type": "function"}], "tool_choice": "none"}),
        (CHAT, {"messages": [], "response_format": {"type": "text"}, "echo": False}),
    ],
)
def test_assembled_requests(path: str, body: dict) -> None:
    assert not_assembled(path, body) is None


@pytest.mark.parametrize(
    ("path", "body", "why"),
    [
        ("/v1/embeddings", {"input": "x"}, "not a completions or chat"),
        (COMPLETIONS, {"prompt": "p", "echo": True}, "echo"),
        (COMPLETIONS, {"prompt": "p", "best_of": 2}, "best_of"),
        (COMPLETIONS, {"prompt": "p", "use_beam_search": True}, "beam"),
        (COMPLETIONS, {"prompt": "p", "prompt_logprobs": 1}, "prompt_logprobs"),
        (COMPLETIONS, {"prompt": "p", "suffix": "s"}, "suffix"),
        (COMPLETIONS, {"prompt": ["a", "b"]}, "single string"),
        (COMPLETIONS, {"prompt": [1, 2]}, "single string"),
        (COMPLETIONS, {"prompt": "p", "stream_options": {}}, "stream_options"),
        (COMPLETIONS, {"prompt": "p", "n": 0}, "positive"),
        (CHAT, {"messages": [], "tools": [{"type": "function"}]}, "tools"),
        (CHAT, {"messages": [], "functions": [{}]}, "function"),
        (CHAT, {"messages": [], "response_format": {"type": "json_object"}}, "response_format"),
        (CHAT, {"messages": [], "guided_json": {}}, "guided"),
        (CHAT, {"messages": [], "structured_outputs": {"json": {}}}, "structured"),
        (CHAT, {"messages": [], "return_token_ids": True}, "return_token_ids"),
    ],
)
def test_forwarded_requests(path: str, body: dict, why: str) -> None:
    reason = not_assembled(path, body)
    assert reason is not None and why in reason


def test_stream_form_asks_for_usage() -> None:
    form = StreamForm.of({"model": "m", "prompt": "p", "stream": False})
    assert form.doc == {
        "model": "m", "prompt": "p", "stream": True, "stream_options": {"include_usage": True}
    }  # fmt: skip
    assert json.loads(form.body) == form.doc


def test_setting_names_engine_kinds(tmp_path: Any) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("routing:\n  assemble_non_streaming: [vllm, llama.cpp]\n")
    cfg = load(RouterConfig, str(path), env={})
    assert cfg.routing.assemble_non_streaming == ["vllm", "llama.cpp"]
    assert RouterConfig().routing.assemble_non_streaming == []
    path.write_text("routing:\n  assemble_non_streaming: ['no spaces']\n")
    with pytest.raises(ConfigError, match=r"routing\.assemble_non_streaming\[0\]"):
        load(RouterConfig, str(path), env={})
