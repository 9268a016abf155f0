"""The incremental SSE parser: events survive any split of the byte stream."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from spotrelay.router.sse import (
    DONE_EVENT,
    SSEParser,
    encode_data,
    encode_json,
    error_and_done,
    error_event,
)


def parse_all(chunks: list[bytes]) -> list[str]:
    parser = SSEParser()
    out = []
    for chunk in chunks:
        out.extend(e.data for e in parser.feed(chunk))
    return out


def test_basic_events_and_done() -> None:
    events = SSEParser().feed(b'data: {"a":1}\n\ndata: [DONE]\n\n')
    assert [e.data for e in events] == ['{"a":1}', "[DONE]"]
    assert events[0].json() == {"a": 1}
    assert not events[0].is_done and events[1].is_done


def test_line_endings_comments_and_fields() -> None:
    raw = (
        b": keepalive\r\n\r\nevent: x\r\nid: 7\r\ndata: one\r\ndata:two\r\n\r\n"
        b"data: three\r\rdata: 4\n\n"
    )
    events = SSEParser().feed(raw)
    assert [e.data for e in events] == ["one\ntwo", "three", "4"]
    assert events[0].event == "x" and events[0].id == "7"
    assert events[1].event is None


def test_cr_lf_split_across_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []
    assert [e.data for e in parser.feed(b"\r\n")] == ["a"]


def test_partial_event_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"x": 1}\n') == []
    assert parser.pending


def test_utf8_split_inside_a_character() -> None:
    payload = encode_json({"text": "héllo 🙂"})
    for cut in range(1, len(payload)):
        assert parse_all([payload[:cut], payload[cut:]]) == [payload[6:-2].decode()]


@settings(deadline=None)
@given(
    texts=st.lists(st.text(max_size=30), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_any_split_gives_the_same_events(texts: list[str], cuts: list[int]) -> None:
    stream = b"".join(encode_json({"t": t}) for t in texts) + DONE_EVENT
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks, prev = [], 0
    for p in [*points, len(stream)]:
        chunks.append(stream[prev:p])
        prev = p
    datas = parse_all(chunks)
    assert [json.loads(d)["t"] for d in datas[:-1]] == texts
    assert datas[-1] == "[DONE]"


def test_encode_multiline_data_round_trips() -> None:
    assert parse_all([encode_data("a\nb")]) == ["a\nb"]


def test_error_event_is_openai_shaped() -> None:
    (event,) = SSEParser().feed(error_event("it broke"))
    body = event.json()
    assert body["error"]["message"] == "it broke"
    assert body["error"]["type"] == "server_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert error_and_done("x").endswith(DONE_EVENT)
