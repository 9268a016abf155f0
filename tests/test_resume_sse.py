"""The one SSE framer (and the parser on top): events survive any split of the byte stream."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spotrelay.router.stream.sse import (
    DONE_EVENT,
    EventTooLarge,
    SSEFramer,
    SSEParser,
    encode_data,
    encode_json,
    error_and_done,
    error_event,
    is_done,
    parse_event,
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


# ---------------------------------------------------------------------------
# The framer


def frame_all(chunks: list[bytes], *, clean_end: bool = True) -> list[bytes]:
    framer = SSEFramer()
    out = [e for chunk in chunks for e in framer.feed(chunk)]
    return out + (framer.end() if clean_end else [])


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks, prev = [], 0
    for p in [*points, len(stream)]:
        chunks.append(stream[prev:p])
        prev = p
    return chunks


def test_framer_normalises_line_ends_and_keeps_raw_events() -> None:
    raw = b'data: {"a":1}\r\n\r\n: ping\r\rdata: x\ndata: y\n\n\n\ndata: [DONE]\r\n\r\n'
    assert frame_all([raw]) == [
        b'data: {"a":1}\n\n',
        b": ping\n\n",
        b"data: x\ndata: y\n\n",
        DONE_EVENT,
    ]


def test_final_event_rule() -> None:
    """Unterminated final event: dispatched at a clean end of the body, dropped at a break."""
    raw = b'data: {"a":1}\n\ndata: [DONE]'
    assert frame_all([raw]) == [b'data: {"a":1}\n\n', DONE_EVENT]
    assert frame_all([raw], clean_end=False) == [b'data: {"a":1}\n\n']
    assert frame_all([raw + b"\r\n"]) == [b'data: {"a":1}\n\n', DONE_EVENT]
    assert frame_all([b"\n\n"]) == []


def test_is_done_and_parse_event() -> None:
    assert is_done(DONE_EVENT) and is_done(b"data:[DONE]\n\n")
    assert not is_done(b'data: {"x": "[DONE]"}\n\n') and not is_done(b"data: [DONE]x\n\n")
    assert parse_event(b": comment\n\n") is None
    event = parse_event(b"event: e\nid: 3\ndata: a\ndata:b\n\n")
    assert event is not None and (event.data, event.event, event.id) == ("a\nb", "e", "3")


LINE_END = st.sampled_from([b"\n", b"\r\n", b"\r"])
FIELD_LINE = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20).map(
        lambda t: b"data: " + t.encode()
    ),
    st.just(b": keep-alive"),
    st.just(b"event: message"),
    st.just(b"data: [DONE]"),
)


@settings(deadline=None)
@given(
    events=st.lists(st.lists(FIELD_LINE, min_size=1, max_size=3), min_size=1, max_size=6),
    ends=st.lists(LINE_END, min_size=1, max_size=4),
    terminated=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12),
)
def test_any_split_of_any_valid_stream_gives_the_same_events(
    events: list[list[bytes]], ends: list[bytes], terminated: bool, cuts: list[int]
) -> None:
    """Any mix of line ends, terminated or not at the end, split anywhere: same events."""
    stream = b""
    for i, lines in enumerate(events):
        end = ends[i % len(ends)]
        stream += b"".join(line + end for line in lines)
        if terminated or i < len(events) - 1:
            stream += end
    whole = frame_all([stream])
    assert frame_all(split(stream, cuts)) == whole
    assert frame_all([bytes([b]) for b in stream]) == whole
    assert len(whole) == len(events)
    assert all(e.endswith(b"\n\n") and b"\r" not in e for e in whole)


# ---------------------------------------------------------------------------
# The framer's bound on an event's size


def test_an_event_over_the_limit_raises_complete_or_not() -> None:
    event = b"data: " + b"x" * 94 + b"\n\n"  # 102 bytes
    assert SSEFramer(102).feed(event) == [event]
    # A piece holding exactly one whole event is not measured (a read bounds it).
    assert SSEFramer(101).feed(event) == [event]
    with pytest.raises(EventTooLarge):
        SSEFramer(101).feed(b"data: ok\n\n" + event)  # behind another
    framer = SSEFramer(101)
    framer.feed(event[:60])
    with pytest.raises(EventTooLarge):
        framer.feed(event[60:])  # completed across reads


def test_a_newline_free_drip_is_no_progress_and_is_bounded() -> None:
    """Bytes without a blank line frame no event, however many; the cap ends them."""
    framer = SSEFramer(10_000)
    assert framer.feed(b"data: first\n\n") == [b"data: first\n\n"]
    for _ in range(99):
        assert framer.feed(b"y" * 100) == []
    assert framer.pending and framer.pending_bytes == 9_900
    with pytest.raises(EventTooLarge, match="10000"):
        framer.feed(b"y" * 101)


def test_without_a_limit_pending_bytes_are_kept_as_pieces() -> None:
    framer = SSEFramer()
    for _ in range(1000):
        framer.feed(b"z" * 1000)
    assert framer.pending_bytes == 1_000_000
    assert framer.feed(b"\n\n") == [b"z" * 1_000_000 + b"\n\n"]
    assert not framer.pending


@settings(deadline=None)
@given(
    events=st.lists(
        st.binary(min_size=1, max_size=40).map(
            lambda b: b"data: " + b.replace(b"\n", b"").replace(b"\r", b"") + b"\n\n"
        ),
        min_size=1,
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_a_limit_at_the_largest_event_changes_nothing(events: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(events)
    framer = SSEFramer(max(map(len, events)))
    got = [e for chunk in split(stream, cuts) for e in framer.feed(chunk)]
    assert got == events
