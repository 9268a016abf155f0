"""Stall detection and the hedge race, I/O-free: the decisions the relay and the sweeper act on.

A hedged stream has two upstreams that may deliver at the same moment. The
client's text must stay exact either way: whichever side wins, nothing is
lost or repeated. These tests drive :class:`HedgeRace` with the resumer and
its handler the way the relay does (every original event under the race's
lock), with a fake clock and a scripted engine, and race both sides on real
threads to check that exactly one wins.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from spotrelay.router.stream.hedge import (
    HedgeRace,
    HedgeState,
    Outcome,
    Rhythm,
    StallPolicy,
    StallWatch,
)
from spotrelay.router.stream.relay import BreakReason, StreamBreak
from spotrelay.router.stream.resume import StreamResumer
from spotrelay.router.stream.resume_handler import ResumingStreamHandler
from spotrelay.router.stream.sse import DONE_EVENT, SSEParser, encode_json
from tests.support.clock import Clock

ANSWER = ["Spot", " GPUs", " are", " cheap", " until", " they", " vanish", "."]
PROMPT = "Tell me about spot GPUs:"


def chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    doc = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    return encode_json({**doc, "choices": [choice]})


def engine(body: dict[str, Any]) -> list[bytes]:
    """A deterministic engine: it continues ``ANSWER`` from wherever the prompt leaves off."""
    done = body["prompt"][len(PROMPT) :]
    k = 0
    while "".join(ANSWER[:k]) != done:
        k += 1
        assert k <= len(ANSWER), f"prompt does not continue the answer: {done!r}"
    rest = ANSWER[k:]
    return [chunk(t) for t in rest[:-1]] + [chunk(rest[-1], "stop"), DONE_EVENT]


def client_text(raw: bytes) -> str:
    text = ""
    for event in SSEParser().feed(raw):
        if not event.is_done:
            text += event.json()["choices"][0]["text"]
    return text


def make_stream() -> tuple[ResumingStreamHandler, HedgeRace, Clock]:
    clock = Clock(100.0)
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 50, "stream": True}
    resumer = StreamResumer("/v1/completions", body, max_resumes=2, clock=clock)
    race = HedgeRace(2, retry_s=1.5, clock=clock)
    return ResumingStreamHandler(resumer), race, clock


def original_delivers(
    handler: ResumingStreamHandler, race: HedgeRace, event: bytes
) -> bytes | None:
    """What the relay does with an original's event: under the lock, unless the hedge won."""
    with race.lock:
        if not race.original_delivered():
            return None
        return handler.on_event(event) or b""


def hedge(handler: ResumingStreamHandler, race: HedgeRace) -> tuple[int, dict[str, Any]]:
    """What the sweeper does on a stall: begin a hedge from the handler's plan."""
    with race.lock:
        assert race.can_begin()
        plan = handler.hedge_plan()
        assert plan is not None
        return race.begin(), plan[0]


def switch(handler: ResumingStreamHandler, race: HedgeRace, planned: dict[str, Any]) -> bytes:
    """The continuation won: the relay's break, then the continuation's events."""
    step = handler.on_break(StreamBreak(BreakReason.STALLED, "hedge won", "a", 3))
    assert step.body == planned, "the switch opens exactly what the hedge opened"
    race.switched()
    out = step.data
    for event in engine(planned):
        out += handler.on_event(event) or b""
    return out


def test_rhythm_and_threshold() -> None:
    policy = StallPolicy(stall_multiple=8, stall_floor_s=1.5)
    stream, node = Rhythm(), Rhythm()
    assert policy.threshold(stream, node) == 1.5  # nothing known yet: the floor
    watch = StallWatch(policy, node)
    for _ in range(30):
        watch.observe(0.05)
    assert watch.threshold() == 1.5  # 8 x 50 ms is under the floor
    assert not watch.stalled(1.0) and watch.stalled(1.6)
    node.gap_s = 0.5  # the node's other streams are slow: this one is judged by them too
    assert watch.threshold() == pytest.approx(4.0)
    for _ in range(60):
        watch.observe(1.0)
    assert watch.threshold() == pytest.approx(8.0, rel=0.05)  # a slow stream's own rhythm


def test_original_wins_and_the_hedge_leaves_no_trace() -> None:
    handler, race, _clock = make_stream()
    events = engine({"prompt": PROMPT})
    out = b"".join(original_delivers(handler, race, e) or b"" for e in events[:3])
    generation, _planned = hedge(handler, race)
    assert race.state is HedgeState.HEDGING
    # The original's next token arrives first: it goes out; the hedge lost.
    out += original_delivers(handler, race, events[3]) or b""
    assert race.state is HedgeState.WATCHING
    assert not race.continuation_delivered(generation)
    for event in events[4:]:
        out += original_delivers(handler, race, event) or b""
    assert client_text(out) == "".join(ANSWER)
    assert race.outcomes == [Outcome.STARTED, Outcome.ORIGINAL_WON]
    assert handler.resumer.attempt == 0, "a lost hedge uses no resume attempt"


def test_continuation_wins_and_stale_original_events_are_dropped() -> None:
    handler, race, _clock = make_stream()
    events = engine({"prompt": PROMPT})
    out = b"".join(original_delivers(handler, race, e) or b"" for e in events[:3])
    generation, planned = hedge(handler, race)
    assert race.continuation_delivered(generation)
    # The original woke up at the same moment: its token is stale and must not go out.
    assert original_delivers(handler, race, events[3]) is None
    out += switch(handler, race, planned)
    assert client_text(out) == "".join(ANSWER)
    assert race.outcomes == [Outcome.STARTED, Outcome.CONTINUATION_WON]


def race_once(handler: ResumingStreamHandler, race: HedgeRace, event: bytes, generation: int):
    """The original's ``event`` and the continuation's first event, released together on two
    threads; returns what the original's delivery gave and whether the continuation won."""
    barrier = threading.Barrier(2)
    result: dict[str, Any] = {}

    def original() -> None:
        barrier.wait()
        result["original"] = original_delivers(handler, race, event)

    def continuation() -> None:
        barrier.wait()
        with race.lock:
            result["continuation"] = race.continuation_delivered(generation)

    threads = [threading.Thread(target=original), threading.Thread(target=continuation)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result["original"], result["continuation"]


@pytest.mark.parametrize("sent", [1, 4, 7])
def test_both_sides_delivering_at_once_on_threads(sent: int) -> None:
    """The original's token and the continuation's first event land together, many times:
    exactly one side wins each race, and the client's text is exact either way."""
    for _ in range(200):
        handler, race, _clock = make_stream()
        events = engine({"prompt": PROMPT})
        out = b"".join(original_delivers(handler, race, e) or b"" for e in events[:sent])
        generation, planned = hedge(handler, race)
        delivered, continuation_won = race_once(handler, race, events[sent], generation)
        assert (delivered is None) == continuation_won, "exactly one winner"
        if continuation_won:
            out += switch(handler, race, planned)
        else:
            out += delivered
            for event in events[sent + 1 :]:
                out += original_delivers(handler, race, event) or b""
        assert client_text(out) == "".join(ANSWER)
        assert len(race.outcomes) == 2


def test_both_deliver_at_once_either_order_is_exact() -> None:
    """The two orders a simultaneous delivery can take, each forced once."""
    for continuation_first in (False, True):
        handler, race, _clock = make_stream()
        events = engine({"prompt": PROMPT})
        out = b"".join(original_delivers(handler, race, e) or b"" for e in events[:2])
        generation, planned = hedge(handler, race)
        if continuation_first:
            with race.lock:
                assert race.continuation_delivered(generation)
            assert original_delivers(handler, race, events[2]) is None
            out += switch(handler, race, planned)
        else:
            out += original_delivers(handler, race, events[2]) or b""
            with race.lock:
                assert not race.continuation_delivered(generation)
            for event in events[3:]:
                out += original_delivers(handler, race, event) or b""
        assert client_text(out) == "".join(ANSWER)


def test_failed_hedge_waits_before_the_next_and_hedges_are_bounded() -> None:
    handler, race, clock = make_stream()
    out = original_delivers(handler, race, engine({"prompt": PROMPT})[0]) or b""
    assert client_text(out) == ANSWER[0]
    generation, _ = hedge(handler, race)
    race.continuation_failed(generation)  # no other node: the original goes on alone
    assert race.state is HedgeState.WATCHING and not race.can_begin()
    clock.now += 1.6
    assert race.can_begin()
    hedge(handler, race)
    with race.lock:
        assert race.original_delivered()
    assert not race.can_begin(), "max_per_stream (2) hedges"


def test_no_hedge_where_a_break_would_not_continue() -> None:
    """A finished stream (only [DONE] missing) or one out of resumes is never hedged."""
    handler, race, _clock = make_stream()
    events = engine({"prompt": PROMPT})
    for event in events[:-1]:
        original_delivers(handler, race, event)
    assert handler.hedge_plan() is None
    off = StreamResumer("/v1/completions", {"model": "m", "prompt": "x"}, max_resumes=0)
    assert ResumingStreamHandler(off).hedge_plan() is None
