"""Stream resume through the production composition, against a deterministic fake engine.

Every run goes through the router's own parts: ``RouterService`` with its
proxy, the stream relay, the resume handler and the resumer; only the node
connections are in-memory (``tests/support/router_fakes.py``), each node answering
from one shared fake engine. The fake engine has the properties the
simulator promises (each token a function of the text before it;
tokenisation stable at a seam; chat continuation with
``continue_final_message``), so a stream broken after k pieces and resumed
must give the client exactly the no-fault output, byte for byte where
nothing broke.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spotrelay.router.proxy import parse_request
from spotrelay.router.service import RouterService
from spotrelay.router.stream.relay import StreamHandler
from spotrelay.router.stream.resume import StreamResumer
from spotrelay.router.stream.resume_request import CHAT, COMPLETIONS, not_resumable, resume_off
from spotrelay.router.stream.sse import SSEParser, encode_json
from tests.support.router_fakes import FakeFleet, FakeResp, fast_config, refused, report

# ---------------------------------------------------------------------------
# A deterministic fake engine speaking vLLM's streaming format

TOKEN_RE = re.compile(r" ?\w+| ?[^\w\s]|\s")
VOCAB = (" a", " b", " ab", " ba", " c", " abc", ".", ",", " the", " end", " X", " Y")


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def next_token(context: str) -> str:
    return VOCAB[zlib.crc32(context.encode()) % len(VOCAB)]


def render_chat(messages: list[dict[str, Any]], add_gen: bool, cont: bool) -> str:
    out = []
    for i, m in enumerate(messages):
        out.append(f"<|{m['role']}|>\n{m['content']}")
        if not (cont and i == len(messages) - 1):
            out.append("<|end|>\n")
    if add_gen and not cont:
        out.append("<|assistant|>\n")
    return "".join(out)


@dataclass
class Generation:
    pieces: list[str]
    finish: str
    prompt_tokens: int
    completion_tokens: int


def generate(path: str, body: dict[str, Any], *, holdback: bool = True) -> Generation:
    """What the engine produces for ``body``: released pieces (one chunk each)."""
    if path == CHAT:
        prompt = render_chat(
            body["messages"],
            body.get("add_generation_prompt", True),
            body.get("continue_final_message", False),
        )
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 40
    else:
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        max_tokens = body.get("max_tokens", 16)
    stop = body.get("stop") or []
    stops = [stop] if isinstance(stop, str) else [s for s in stop if s]
    include = bool(body.get("include_stop_str_in_output"))
    hold = 0 if (include or not holdback or not stops) else max(map(len, stops)) - 1
    out, released, pieces, pending = "", 0, [], []
    for n in range(1, max_tokens + 1):
        tok = next_token(prompt + out)
        out += tok
        pending.append(tok)
        hits = [(out.find(s), s) for s in stops if s in out]
        if hits:
            idx, s = min(hits)
            cut = idx + (len(s) if include else 0)
            for t in pending:
                piece = t[: max(0, cut - released)]
                if piece:
                    pieces.append(piece)
                released += len(t)
            return Generation(pieces, "stop", count_tokens(prompt), n)
        while pending and released + len(pending[0]) <= len(out) - hold:
            released += len(pending[0])
            pieces.append(pending.pop(0))
    pieces.extend(pending)
    return Generation(pieces, "length", count_tokens(prompt), max_tokens)


@dataclass
class Fault:
    drop_after: int | None = None  # pieces streamed before the connection drops
    error_event: bool = False  # end with an in-stream error event instead of a reset
    abort: bool = False  # end with finish_reason "abort" then [DONE]
    refuse: bool = False  # the attempt cannot even be opened (connection refused)
    status: int | None = None  # the node answers this status (with an OpenAI error body)


@dataclass
class AttemptEngine:
    """Serves successive attempts; ``faults[i]`` applies to attempt i (none after the list)."""

    faults: list[Fault] = field(default_factory=list)
    holdback: bool = True
    finish_merged: bool = False  # finish_reason on the last piece's chunk, as vLLM does
    fingerprint: bool = True
    continuous_usage: bool = False
    forced: dict[int, list[str]] = field(default_factory=dict)  # attempt -> pieces (a new sample)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    responses: list[FakeResp] = field(default_factory=list)

    @property
    def closed(self) -> list[bool]:
        """Per streamed attempt: the router closed or released its connection."""
        return [r.closed or r.released for r in self.responses]

    def open(self, path: str, body: dict[str, Any]) -> Iterator[bytes]:
        """The events of an unbroken attempt (what a client talking to the engine gets)."""
        return self._events(len(self.attempts), path, body, Fault())

    def respond(self, call: dict[str, Any]) -> FakeResp:
        """A node's answer to one request the router sent (``FakeFleet`` behaviour)."""
        i = len(self.attempts)
        body = json.loads(call["body"])
        self.attempts.append(body)
        fault = self.faults[i] if i < len(self.faults) else Fault()
        if fault.refuse:
            raise refused()
        if fault.status is not None:
            error = {"error": {"message": "prompt too long", "type": "invalid_request_error"}}
            return FakeResp(fault.status, json.dumps(error).encode())
        events = self._events(i, call["url"], body, fault)
        # Split every event (one byte, then the rest) to exercise the router's framer.
        resp = FakeResp(200, chunks=_split(events))  # type: ignore[arg-type]
        self.responses.append(resp)
        return resp

    def _events(self, i: int, path: str, body: dict[str, Any], fault: Fault) -> Iterator[bytes]:
        gen = generate(path, body, holdback=self.holdback)
        if i in self.forced:
            gen = Generation(self.forced[i], "length", gen.prompt_tokens, len(self.forced[i]))
        chat = path == CHAT
        head: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-attempt{i}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1000 + i,
            "model": "m",
        }
        if self.fingerprint:
            head["system_fingerprint"] = f"fp{i}"
        opts = body.get("stream_options") or {}
        usage_on = bool(opts.get("include_usage"))

        def usage(n: int) -> dict[str, int]:
            p = gen.prompt_tokens
            return {"prompt_tokens": p, "total_tokens": p + n, "completion_tokens": n}

        def chunk(payload: dict[str, Any], n: int | None = None) -> bytes:
            obj = {**head, "choices": [{"index": 0, **payload}]}
            if usage_on:
                obj["usage"] = usage(n) if (self.continuous_usage and n is not None) else None
            return encode_json(obj)

        def content(text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                delta = {"content": text} if (text or finish is None) else {}
                return {"delta": delta, "logprobs": None, "finish_reason": finish}
            return {"text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}

        if chat:
            yield chunk({"delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}, 0)  # fmt: skip
        # Like the simulator: the drop comes after `drop_after` content chunks, before
        # anything else (the finish chunk, unless merged into the last piece as vLLM does).
        last = len(gen.pieces) - 1
        for j, piece in enumerate(gen.pieces):
            if fault.drop_after is not None and j >= fault.drop_after:
                yield from self._break(fault, chat, head)
                return
            merged = self.finish_merged and j == last
            yield chunk(content(piece, gen.finish if merged else None), j + 1)
        if fault.drop_after is not None and fault.drop_after <= len(gen.pieces):
            yield from self._break(fault, chat, head)
            return
        if not (self.finish_merged and gen.pieces):
            yield chunk(content("", gen.finish), gen.completion_tokens)
        if usage_on:
            yield encode_json({**head, "choices": [], "usage": usage(gen.completion_tokens)})
        yield b"data: [DONE]\n\n"

    def _break(self, fault: Fault, chat: bool, head: dict[str, Any]) -> Iterator[bytes]:
        if fault.error_event:
            yield encode_json({"error": {"message": "engine died", "type": "server_error"}})
            return
        if fault.abort:
            choice = {"index": 0, "finish_reason": "abort", "logprobs": None}
            choice.update({"delta": {}} if chat else {"text": ""})
            yield encode_json({**head, "choices": [choice]})
            yield b"data: [DONE]\n\n"
            return
        raise ConnectionResetError("connection reset by peer")


def _split(events: Iterator[bytes]) -> Iterator[bytes]:
    for event in events:
        yield event[:1]
        yield event[1:]


# ---------------------------------------------------------------------------
# Running a request through the resumer, and reading what the client got


@dataclass
class ClientView:
    raw: bytes
    chunks: list[dict[str, Any]]
    text: str
    roles: int
    finishes: list[str]
    usages: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    done: bool


def read_client(raw: bytes, chat: bool) -> ClientView:
    events = SSEParser().feed(raw)
    assert events, "no events"
    done = events[-1].is_done
    assert sum(e.is_done for e in events) == (1 if done else 0)
    chunks, errors, usages, finishes = [], [], [], []
    text, roles = "", 0
    for e in events:
        if e.is_done:
            continue
        obj = e.json()
        if "error" in obj:
            errors.append(obj["error"])
            continue
        chunks.append(obj)
        if obj.get("usage"):
            usages.append(obj["usage"])
        for ch in obj.get("choices", []):
            if chat:
                d = ch.get("delta", {})
                roles += "role" in d
                text += d.get("content") or ""
            else:
                text += ch.get("text") or ""
            if ch.get("finish_reason"):
                finishes.append(ch["finish_reason"])
    return ClientView(raw, chunks, text, roles, finishes, usages, errors, done)


NODES = [f"http://10.0.1.{i}:8000" for i in range(1, 7)]
VLLM = {"kind": "vllm", "version": "0.11.0", "capabilities": ["continue_final_message"]}


def router_for(
    engine: AttemptEngine, *, max_resumes: int = 2, enabled: bool = True
) -> tuple[RouterService, list[StreamHandler]]:
    """A router whose nodes all answer from ``engine``; records the stream handlers made."""
    fleet = FakeFleet()
    cfg = fast_config(
        resume={"enabled": enabled, "max_attempts": max_resumes},
        health={"consecutive_failures": 100000},
        retry={"budget_ratio": 1.0, "budget_min_per_s": 1000},
    )
    svc = RouterService(cfg, "node-secret", pool_factory=fleet.pool_factory)
    handlers: list[StreamHandler] = []
    make = svc.proxy.stream_handler_factory

    def recording(req: Any, proxy: Any) -> StreamHandler:
        handlers.append(make(req, proxy))
        return handlers[-1]

    svc.proxy.stream_handler_factory = recording
    for i, url in enumerate(NODES):
        doc = report(url, ["m"], engine=VLLM)
        assert svc.put_node(f"n{i}", json.dumps(doc).encode()).status == 200
        fleet.behaviour[url] = engine.respond
    return svc, handlers


def start(svc: RouterService, path: str, body: dict[str, Any], *, off: bool = False) -> Any:
    req = parse_request(
        path,
        json.dumps(body).encode(),
        request_id="r1",
        received=time.monotonic(),
        deadline_s=60,
        resume_off=off,
    )
    resp = svc.proxy.forward(req)
    assert resp.status == 200, resp.body
    return resp


def run(
    path: str,
    body: dict[str, Any],
    engine: AttemptEngine,
    *,
    max_resumes: int = 2,
    off: bool = False,
    enabled: bool = True,
) -> tuple[ClientView, StreamResumer]:
    svc, handlers = router_for(engine, max_resumes=max_resumes, enabled=enabled)
    resp = start(svc, path, body, off=off)
    raw = b"".join(resp.body)
    resp.body.close()
    [handler] = handlers
    return read_client(raw, path == CHAT), handler.resumer  # type: ignore[attr-defined]


def completions_body(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once upon a time", "max_tokens": 12, "stream": True, **kw}


def chat_body(**kw: Any) -> dict[str, Any]:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me."}]
    return {"model": "m", "messages": msgs, "max_tokens": 12, "stream": True, **kw}


def reference(path: str, body: dict[str, Any], **engine_kw: Any) -> ClientView:
    view, _ = run(path, body, AttemptEngine(**engine_kw))
    assert view.done and not view.errors
    return view


def assert_one_stream(view: ClientView, chat: bool, include_usage: bool) -> None:
    """The client saw one coherent stream."""
    assert view.done and not view.errors
    ids = {c["id"] for c in view.chunks}
    assert len(ids) == 1
    assert len({c["created"] for c in view.chunks}) == 1
    assert {c["model"] for c in view.chunks} == {"m"}
    assert len({c.get("system_fingerprint") for c in view.chunks}) == 1
    assert len(view.finishes) == 1
    assert view.roles == (1 if chat else 0)
    assert len(view.usages) == (1 if include_usage else 0)
    if include_usage:
        assert view.chunks[-1]["choices"] == [] and view.chunks[-1]["usage"]


# ---------------------------------------------------------------------------
# Pass-through when nothing breaks


@pytest.mark.parametrize("path,body", [(COMPLETIONS, completions_body()), (CHAT, chat_body())])
def test_unbroken_stream_passes_through_byte_for_byte(path: str, body: dict[str, Any]) -> None:
    engine = AttemptEngine()
    direct = b"".join(engine.open(path, body))
    view, resumer = run(path, body, AttemptEngine())
    assert view.raw == direct
    assert resumer.attempts.resumes == 0


def test_unbroken_stream_with_usage_passes_through() -> None:
    body = completions_body(stream_options={"include_usage": True})
    direct = b"".join(AttemptEngine().open(COMPLETIONS, body))
    view, _ = run(COMPLETIONS, body, AttemptEngine())
    assert view.raw == direct


# ---------------------------------------------------------------------------
# The core property: broken and resumed == unbroken


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("k", [0, 1, 5, 11, 12])
def test_resumed_equals_unbroken(chat: bool, usage: bool, k: int) -> None:
    path = CHAT if chat else COMPLETIONS
    extra = {"stream_options": {"include_usage": True}} if usage else {}
    body = (chat_body if chat else completions_body)(**extra)
    ref = reference(path, body)
    view, resumer = run(path, body, AttemptEngine(faults=[Fault(drop_after=k)]))
    assert_one_stream(view, chat, usage)
    assert view.text == ref.text
    assert view.finishes == ref.finishes
    assert view.usages == ref.usages
    if chat or k:  # the identity of the first attempt that sent anything
        assert view.chunks[0]["id"] == ref.chunks[0]["id"]
    # Nothing left to generate at k=12: finish locally (one-token usage probe if asked).
    # Completions k=0: nothing reached the client, so the proxy simply retried.
    expected = (0, int(usage)) if k == 12 else (0, 0) if (k == 0 and not chat) else (1, 0)
    assert (resumer.attempts.resumes, resumer.attempts.probes) == expected


@pytest.mark.parametrize("merged", [False, True])
def test_break_after_finish_chunk_needs_only_usage(merged: bool) -> None:
    """Dropped after the last piece (and maybe its finish): a one-token probe measures
    the prompt; nothing is regenerated."""
    body = completions_body(stream_options={"include_usage": True})
    ref = reference(COMPLETIONS, body)
    engine = AttemptEngine(faults=[Fault(drop_after=12)], finish_merged=merged)
    view, _ = run(COMPLETIONS, body, engine)
    assert_one_stream(view, False, True)
    assert (view.text, view.usages, view.finishes) == (ref.text, ref.usages, ref.finishes)
    assert len(engine.attempts) == 2
    assert engine.attempts[1]["max_tokens"] == 1  # the probe


def test_no_probe_without_usage() -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=12)])
    view, _ = run(COMPLETIONS, completions_body(), engine)
    assert view.done and view.finishes == ["length"] and len(engine.attempts) == 1
    assert view.text == reference(COMPLETIONS, completions_body()).text


def test_two_breaks_within_the_limit() -> None:
    body = chat_body(max_tokens=20, stream_options={"include_usage": True})
    ref = reference(CHAT, body)
    engine = AttemptEngine(faults=[Fault(drop_after=3), Fault(drop_after=6)])
    view, resumer = run(CHAT, body, engine)
    assert_one_stream(view, True, True)
    assert (view.text, view.usages) == (ref.text, ref.usages)
    assert resumer.attempts.resumes == 2 and resumer.attempts.outcomes == ["ok", "ok"]
    # The second continuation carries both earlier attempts' text.
    assert (
        engine.attempts[2]["messages"][-1]["content"]
        == ref.text[: len(resumer.text)][: len(engine.attempts[2]["messages"][-1]["content"])]
    )
    assert engine.attempts[2]["max_tokens"] == 20 - 9


@pytest.mark.parametrize(
    "fault",
    [Fault(drop_after=4, error_event=True), Fault(drop_after=4, abort=True)],
    ids=["error_event", "abort"],
)
def test_error_event_and_abort_are_breaks(fault: Fault) -> None:
    body = completions_body()
    view, resumer = run(COMPLETIONS, body, AttemptEngine(faults=[fault]))
    assert_one_stream(view, False, False)
    assert view.text == reference(COMPLETIONS, body).text
    assert resumer.attempts.resumes == 1


def test_continuous_usage_is_restated() -> None:
    body = chat_body(stream_options={"include_usage": True, "continuous_usage_stats": True})
    ref = reference(CHAT, body, continuous_usage=True)
    view, _ = run(CHAT, body, AttemptEngine(faults=[Fault(drop_after=5)], continuous_usage=True))
    assert view.text == ref.text
    assert view.usages == ref.usages  # every chunk's usage, as if never broken


def test_a_refused_continuation_is_retried_on_another_node() -> None:
    body = completions_body()
    engine = AttemptEngine(faults=[Fault(drop_after=2), Fault(refuse=True)])
    view, resumer = run(COMPLETIONS, body, engine)
    assert view.text == reference(COMPLETIONS, body).text and not view.errors
    assert resumer.attempts.outcomes == ["ok"] and resumer.attempts.resumes == 1
    assert len(engine.attempts) == 3 and engine.attempts[1] == engine.attempts[2]


# ---------------------------------------------------------------------------
# Stop strings across the seam


def _stop_spanning(text_pieces: list[str], k: int) -> str:
    """A stop string that starts in piece k-1 and ends in piece k."""
    a, b = text_pieces[k - 1], text_pieces[k]
    return a[-2:] + b[:2]


@pytest.mark.parametrize("holdback", [True, False], ids=["engine_holds_back", "naive_engine"])
@pytest.mark.parametrize("include", [False, True])
def test_stop_spanning_the_seam_with_a_new_sample(holdback: bool, include: bool) -> None:
    """A continuation that is a *different* sample (a real model) completes a stop string
    whose start the client must not have seen: the router must stop it itself."""
    # " fo" is committed once "Q" follows it; "Q" itself is lost at the drop (not yet
    # committed), and the new sample continues with "o bar": "foo b" spans the seam.
    before = ["Hello", " world", " fo", "Q", "x", "x"]
    after = ["o", " bar", " baz", " qux"]
    body = completions_body(prompt="P", stop=["foo b"], include_stop_str_in_output=include)
    engine = AttemptEngine(faults=[Fault(drop_after=4)], forced={0: before, 1: after},
                        holdback=holdback)  # fmt: skip
    view, _ = run(COMPLETIONS, body, engine)
    assert view.done and not view.errors
    expected = "Hello world foo b" if include else "Hello world "
    assert view.text == expected
    assert view.finishes == ["stop"]
    assert engine.closed == [True, True]
    assert "foo b" not in view.text or include


def test_seam_stop_with_usage_probes_for_the_prompt() -> None:
    body = completions_body(prompt="P Q", stop="foo b", stream_options={"include_usage": True})
    engine = AttemptEngine(
        faults=[Fault(drop_after=4)],
        forced={0: ["Hello", " world", " fo", "Q", "x"], 1: ["o", " bar", " x"]},
    )
    view, _ = run(COMPLETIONS, body, engine)
    assert view.text == "Hello world " and view.finishes == ["stop"]
    assert engine.attempts[2]["max_tokens"] == 1  # probe after the local stop
    # completion: 3 + 2 pieces counted (the stop's last token too); prompt: the probe's
    # prompt tokens minus those 5 (a new sample need not tokenise like the pieces did)
    probe_prompt = count_tokens(engine.attempts[2]["prompt"])
    assert engine.attempts[2]["prompt"] == "P QHello world foo bar"
    assert view.usages == [
        {"prompt_tokens": probe_prompt - 5, "total_tokens": probe_prompt, "completion_tokens": 5}
    ]


def test_held_back_stop_prefix_is_released_when_no_stop_follows() -> None:
    body = completions_body(prompt="P", stop=["foo b"])
    engine = AttemptEngine(
        faults=[Fault(drop_after=3)], forced={0: ["Hi", " fo", "Q"], 1: ["o", " x", " y"]}
    )
    view, _ = run(COMPLETIONS, body, engine)
    assert view.text == "Hi foo x y"  # ' fo' waited, then went out with ' x'
    assert view.finishes == ["length"]
    # the longest tail that could start "foo b" waits: "fo", then "foo"
    assert [c["choices"][0]["text"] for c in view.chunks] == ["Hi", " ", "foo x", " y", ""]


def test_min_tokens_suppresses_seam_stop() -> None:
    body = completions_body(prompt="P", stop=["foo b"], min_tokens=9)
    engine = AttemptEngine(
        faults=[Fault(drop_after=4)], forced={0: ["Hello", " world", " fo", "Q"], 1: ["o", " bar"]}
    )
    view, _ = run(COMPLETIONS, body, engine)
    assert view.text == "Hello world foo bar"
    assert engine.attempts[1]["min_tokens"] == 6


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chat=st.booleans(),
    usage=st.booleans(),
    include=st.booleans(),
    merged=st.booleans(),
    prompt=st.sampled_from(["Once", "The end.", "a b c", "X Y X"]),
    max_tokens=st.integers(min_value=1, max_value=24),
    stop_span=st.tuples(st.integers(0, 30), st.integers(2, 6)),
    use_stop=st.booleans(),
    breaks=st.lists(st.integers(min_value=0, max_value=26), min_size=1, max_size=2),
)
def test_property_resumed_equals_unbroken(
    chat: bool,
    usage: bool,
    include: bool,
    merged: bool,
    prompt: str,
    max_tokens: int,
    stop_span: tuple[int, int],
    use_stop: bool,
    breaks: list[int],
) -> None:
    """Any break points, any stop string (taken from the output, so it hits)."""
    path = CHAT if chat else COMPLETIONS
    kw: dict[str, Any] = {"max_tokens": max_tokens}
    if usage:
        kw["stream_options"] = {"include_usage": True}
    if chat:
        body = chat_body(**kw)
        body["messages"][-1]["content"] = prompt
    else:
        body = completions_body(prompt=prompt, **kw)
    if use_stop:
        full = "".join(generate(path, body).pieces)
        start, length = stop_span
        stop = full[start : start + length]
        assume(len(stop) >= 2)
        body["stop"] = [stop, "zzz"]
        body["include_stop_str_in_output"] = include
    ref = reference(path, body, finish_merged=merged)
    engine = AttemptEngine(faults=[Fault(drop_after=k) for k in breaks], finish_merged=merged)
    view, _ = run(path, body, engine)
    assert_one_stream(view, chat, usage)
    assert view.text == ref.text
    assert view.finishes == ref.finishes
    pieces = len(generate(path, body).pieces)
    # Each fault counts tokens of its own attempt, so a break's place in the whole
    # output is the running sum of the breaks before and including it.
    after_last_piece = any(at >= pieces for at in itertools.accumulate(breaks))
    if merged and ref.finishes == ["stop"] and pieces and after_last_piece and usage:
        # Broke after vLLM's merged last chunk, before usage: the tokens the engine
        # generated but never showed (a cut stop string) cannot be known. Documented.
        assert view.usages[0]["prompt_tokens"] == ref.usages[0]["prompt_tokens"]
        assert view.usages[0]["completion_tokens"] <= ref.usages[0]["completion_tokens"]
    else:
        assert view.usages == ref.usages


# ---------------------------------------------------------------------------
# Limits and eligibility


def test_exhausted_resumes_end_with_error_then_done() -> None:
    body = completions_body()
    engine = AttemptEngine(faults=[Fault(drop_after=2), Fault(drop_after=2), Fault(drop_after=2)])
    view, resumer = run(COMPLETIONS, body, engine, max_resumes=2)
    assert view.done and len(view.errors) == 1
    assert view.errors[0]["type"] == "server_error" and "gave up" in view.errors[0]["message"]
    assert view.text == reference(COMPLETIONS, body).text[: len(view.text)]  # a clean prefix
    assert resumer.attempts.outcomes == ["ok", "ok", "exhausted"]
    assert view.raw.endswith(b"data: [DONE]\n\n")


def test_all_opens_failing_exhausts() -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=2)] + [Fault(refuse=True)] * 100)
    view, resumer = run(COMPLETIONS, completions_body(), engine)
    assert view.errors and view.done
    assert resumer.attempts.outcomes == ["failed", "failed", "exhausted"]


def test_rejected_continuation_stops_at_once() -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=2), Fault(status=400)])
    view, resumer = run(COMPLETIONS, completions_body(), engine)
    assert view.done and "prompt too long" in view.errors[0]["message"]
    assert len(engine.attempts) == 2 and resumer.attempts.outcomes == ["failed"]


@pytest.mark.parametrize(
    "off,enabled,max_resumes", [(True, True, 2), (False, False, 2), (False, True, 0)]
)
def test_disabled_falls_back_to_error_event(off: bool, enabled: bool, max_resumes: int) -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=3)])
    view, resumer = run(
        COMPLETIONS, completions_body(), engine, off=off, enabled=enabled,
        max_resumes=max_resumes,
    )  # fmt: skip
    assert view.done and len(view.errors) == 1 and "disabled" in view.errors[0]["message"]
    assert len(engine.attempts) == 1 and resumer.attempts.outcomes == ["disabled"]


def test_header_values() -> None:
    assert resume_off(" OFF ") and resume_off("0") and resume_off("false")
    assert not resume_off("on")
    assert not resume_off(None)


@pytest.mark.parametrize(
    "path,extra,why",
    [
        (COMPLETIONS, {"n": 2}, "n > 1"),
        (COMPLETIONS, {"best_of": 3}, "best_of"),
        (COMPLETIONS, {"logprobs": 1}, "logprobs"),
        (COMPLETIONS, {"echo": True}, "echo"),
        (COMPLETIONS, {"suffix": "x"}, "suffix"),
        (COMPLETIONS, {"prompt": [1, 2, 3]}, "prompt"),
        (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
        (CHAT, {"logprobs": True}, "logprobs"),
        (CHAT, {"top_logprobs": 2}, "logprobs"),
        (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (CHAT, {"functions": [{"name": "f"}]}, "function"),
        (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
        (CHAT, {"guided_json": {"type": "object"}}, "guided_json"),
        ("/v1/embeddings", {}, "not resumable"),
    ],
)
def test_not_resumable_requests(path: str, extra: dict[str, Any], why: str) -> None:
    base = completions_body() if path != CHAT else chat_body()
    reason = not_resumable(path, {**base, **extra})
    assert reason is not None and why in reason


def test_resumable_requests() -> None:
    assert not_resumable(COMPLETIONS, completions_body(prompt=["one string"])) is None
    assert not_resumable(COMPLETIONS, completions_body(logprobs=None, n=1)) is None
    assert not_resumable(CHAT, chat_body(tools=[{"type": "function"}], tool_choice="none")) is None
    assert not_resumable(CHAT, chat_body(response_format={"type": "text"})) is None


def test_not_resumable_break_gives_error_event() -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=3)])
    view, resumer = run(COMPLETIONS, completions_body(echo=True), engine)
    assert view.done and "not resumed: echo" in view.errors[0]["message"]
    assert resumer.attempts.outcomes == ["not_resumable"]


def test_tool_call_in_flight_is_not_resumable() -> None:
    body = chat_body()
    resumer = StreamResumer(CHAT, body)
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    delta = {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{"}}]}
    out = resumer.feed(encode_json({**head, "choices": [{"index": 0, "delta": delta}]}))
    assert out  # passed through
    data, body = resumer.after_break("reset")
    assert body is None and b"tool call in flight" in data


# ---------------------------------------------------------------------------
# Continuation bodies


def test_completions_continuation_body() -> None:
    body = completions_body(prompt=["Hi"], max_tokens=10, min_tokens=5)
    r = StreamResumer(COMPLETIONS, body)
    head = {"id": "c", "object": "text_completion", "created": 1, "model": "m"}
    for t in [" a", " b", " c"]:
        r.feed(encode_json({**head, "choices": [{"index": 0, "text": t, "finish_reason": None}]}))
    _data, cont = r.after_break("reset")
    assert cont is not None
    assert cont["prompt"] == "Hi a b c"
    assert cont["max_tokens"] == 7 and cont["min_tokens"] == 2
    assert cont["stream"] is True
    assert body["prompt"] == ["Hi"]  # the original is untouched


def test_with_stop_strings_the_last_piece_before_a_break_is_regenerated() -> None:
    """The engine may have cut that piece at a stop string and not said so yet."""
    body = completions_body(prompt="Hi", max_tokens=10, stop=["zz"])
    r = StreamResumer(COMPLETIONS, body)
    head = {"id": "c", "object": "text_completion", "created": 1, "model": "m"}
    shown = b"".join(
        r.feed(encode_json({**head, "choices": [{"index": 0, "text": t, "finish_reason": None}]}))
        for t in [" a", " b", " c"]
    )
    assert [e.json()["choices"][0]["text"] for e in SSEParser().feed(shown)] == [" a", " b"]
    _data, body = r.after_break("reset")
    assert body is not None
    assert body["prompt"] == "Hi a b" and body["max_tokens"] == 8


def test_completions_default_max_tokens_is_16() -> None:
    r = StreamResumer(COMPLETIONS, {"model": "m", "prompt": "Hi", "stream": True})
    r.feed(encode_json({"id": "c", "choices": [{"index": 0, "text": " a"}]}))
    assert r.after_break("reset")[1]["max_tokens"] == 15  # type: ignore[index]


def test_chat_continuation_body() -> None:
    body = chat_body(max_completion_tokens=8)
    del body["max_tokens"]
    r = StreamResumer(CHAT, body)
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    r.feed(encode_json({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    r.feed(encode_json({**head, "choices": [{"index": 0, "delta": {"content": "Sure"}}]}))
    _data, body = r.after_break("reset")
    assert body is not None
    assert body["messages"][-1] == {"role": "assistant", "content": "Sure"}
    assert len(body["messages"]) == 3
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


def test_chat_continuation_of_a_continuation_extends_the_final_message() -> None:
    body = chat_body(continue_final_message=True, add_generation_prompt=False)
    body["messages"].append({"role": "assistant", "content": "Well,"})
    r = StreamResumer(CHAT, body)
    r.feed(encode_json({"id": "c", "choices": [{"index": 0, "delta": {"content": " yes"}}]}))
    _data, body = r.after_break("reset")
    assert body["messages"][-1]["content"] == "Well, yes"  # type: ignore[index]
    assert len(body["messages"]) == 3  # type: ignore[index]


def test_no_tokens_left_finishes_locally() -> None:
    r = StreamResumer(COMPLETIONS, completions_body(max_tokens=2))
    for t in [" a", " b"]:
        choice = {"index": 0, "text": t, "finish_reason": None}
        r.feed(encode_json({"id": "c", "created": 5, "model": "m", "choices": [choice]}))
    data, body = r.after_break("reset")
    assert body is None
    view = read_client(data, False)
    assert view.finishes == ["length"] and view.done and view.chunks[0]["id"] == "c"
    assert r.attempts.outcomes == ["ok"]


def test_client_disconnect_closes_the_upstream() -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=2)])
    svc, _ = router_for(engine)
    resp = start(svc, COMPLETIONS, completions_body())
    gen = iter(resp.body)
    while len(engine.attempts) < 2:  # into the second attempt
        next(gen)
    next(gen)
    resp.body.close()
    assert engine.closed == [True, True]
    assert all(node.in_flight == 0 for node in svc.registry.nodes())


def test_identity_comes_from_the_first_chunk_and_is_kept() -> None:
    body = chat_body(stream_options={"include_usage": True})
    view, _ = run(CHAT, body, AttemptEngine(faults=[Fault(drop_after=4)]))
    assert {c["id"] for c in view.chunks} == {"chatcmpl-attempt0"}
    assert {c["created"] for c in view.chunks} == {1000}
    assert {c["system_fingerprint"] for c in view.chunks} == {"fp0"}


def test_seam_latency_and_resumed_tokens_are_observed() -> None:
    engine = AttemptEngine(faults=[Fault(drop_after=5)])
    svc, _ = router_for(engine)
    b"".join(start(svc, COMPLETIONS, completions_body()).body)
    m = svc.metrics
    assert m.resumes.labels("ok")._value.get() == 1
    assert m.resumed_tokens._value.get() == 5
    assert m.resume_seam._sum.get() >= 0 and m.stream_breaks.labels("reset")._value.get() == 1


@pytest.mark.parametrize(
    "faults, outcome",
    [([], "complete"), ([Fault(drop_after=4)], "resumed"), ([Fault(drop_after=12)], "resumed"),
     ([Fault(drop_after=2)] * 3, "broken")],
)  # fmt: skip
def test_the_access_log_outcome_says_how_the_stream_ended(
    faults: list[Fault], outcome: str
) -> None:
    svc, _ = router_for(AttemptEngine(faults=faults))
    relay = start(svc, COMPLETIONS, completions_body()).body
    b"".join(relay)
    relay.close()
    assert relay.outcome == outcome
