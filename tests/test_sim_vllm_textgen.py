"""Properties of the simulator's deterministic model, engine and fault state (no HTTP).

These are the guarantees stream resume is built on: continuation equals
generation, tokenization is stable at the seam, and the chat template
continues a partial assistant message exactly.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spotrelay.sim import textgen
from spotrelay.sim.engine import Engine, EngineSettings, Scheduler, StopMatcher
from spotrelay.sim.faults import FaultError, Faults
from spotrelay.sim.vllm_protocol import (
    BadRequest,
    Limits,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json,
)

texts = st.text(max_size=60)
# Prompts that stress the tokenizer seam: spaces, newlines, punctuation, unicode.
seam_texts = st.text(alphabet=st.sampled_from([*"ab é.,!? \n\t_-<|>", "日"]), max_size=30)
any_text = st.one_of(texts, seam_texts)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": any_text}
    ),
    min_size=1,
    max_size=4,
)


@given(any_text)
def test_tokens_concatenate_back_to_the_text(text: str) -> None:
    assert "".join(textgen.tokenize(text)) == text
    assert textgen.count_tokens(text) == len(textgen.tokenize(text))


@given(any_text, st.integers(0, 40), st.data())
def test_continuation_equals_generation(prompt: str, n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    full = textgen.generate(prompt, n)
    first = textgen.generate(prompt, k)
    rest = textgen.generate(prompt + "".join(first), n - k)
    assert first + rest == full


@given(any_text, st.integers(0, 40))
def test_tokenization_is_stable_at_the_seam(prompt: str, k: int) -> None:
    generated = textgen.generate(prompt, k)
    assert textgen.tokenize(prompt + "".join(generated)) == textgen.tokenize(prompt) + generated
    assert all(tok for tok in generated)


@given(messages, st.integers(0, 30), st.data())
def test_chat_continue_final_message_continues_exactly(
    msgs: list[dict], n: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(0, n))
    prompt = textgen.render_chat(msgs, add_generation_prompt=True)
    full = textgen.generate(prompt, n)
    partial = "".join(full[:k])
    resumed = textgen.render_chat(
        [*msgs, {"role": "assistant", "content": partial}],
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert resumed == prompt + partial
    assert textgen.count_tokens(resumed) == textgen.count_tokens(prompt) + k
    assert full[:k] + textgen.generate(resumed, n - k) == full


def test_chat_template_shape() -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert textgen.render_chat(msgs) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    )
    assert textgen.render_chat(msgs, add_generation_prompt=False).endswith("Hi<|end|>\n")
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert "a\nb" in textgen.render_chat(parts)


def test_generation_is_deterministic_and_wordy() -> None:
    a = "".join(textgen.generate("Once upon a time", 50))
    assert a == "".join(textgen.generate("Once upon a time", 50))
    assert a != "".join(textgen.generate("Once upon a tim", 50))
    assert len(a.split()) > 30
    # After a newline (a chat generation prompt) the first token has no leading space.
    assert not textgen.generate("<|assistant|>\n", 1)[0].startswith(" ")


def test_embeddings_are_unit_vectors_keyed_by_text() -> None:
    v = textgen.embed("hello", 64)
    assert len(v) == 64
    assert abs(sum(x * x for x in v) - 1.0) < 1e-9
    assert v == textgen.embed("hello", 64)
    assert v != textgen.embed("hello!", 64)


# -- stop strings -----------------------------------------------------------


def _run_matcher(tokens: list[str], stops: list[str], include: bool) -> tuple[list[str], bool]:
    m = StopMatcher(stops, include)
    out: list[str] = []
    for tok in tokens:
        pieces, stopped = m.push(tok)
        out.extend(pieces)
        if stopped:
            return out, True
    return out + m.flush(), False


def _reference(tokens: list[str], stops: list[str], include: bool) -> tuple[str, bool]:
    """Stop semantics spelled out: after each token, cut at the earliest stop in the text."""
    text = ""
    for tok in tokens:
        text += tok
        best = None
        for stop in stops:
            idx = text.find(stop)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is not None:
            return text[: best[0] + (len(best[1]) if include else 0)], True
    return text, False


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=20), st.integers(1, 40), st.data(), st.booleans())
def test_stop_cuts_at_the_first_stop_string(
    prompt: str, n: int, data: st.DataObject, include: bool
) -> None:
    tokens = textgen.generate(prompt, n)
    text = "".join(tokens)
    # One stop taken from the text itself (so it hits) and one that usually does not.
    start = data.draw(st.integers(0, max(0, len(text) - 1)))
    stops = [text[start : start + data.draw(st.integers(1, 12))], data.draw(st.text(max_size=4))]
    stops = [s for s in stops if s]
    out, stopped = _run_matcher(tokens, stops, include)
    want, want_stopped = _reference(tokens, stops, include)
    assert ("".join(out), stopped) == (want, want_stopped)
    # One piece per token; only the piece cut by a stop string can be shorter.
    whole = max(0, len(out) - 1)
    assert out[:whole] == tokens[:whole]
    if not stopped:
        assert out == tokens


def test_stop_holds_back_only_what_could_start_a_stop() -> None:
    m = StopMatcher(["ab c"], include=False)
    assert m.push("x") == (["x"], False)
    assert m.push(" ab") == ([], False)  # "ab" could be the start of "ab c"
    assert m.push("x") == ([" ab", "x"], False)  # no longer: both go out, one chunk each
    assert m.push(" a") == ([], False)
    pieces, stopped = m.push("b c")
    assert stopped and pieces == [" "]
    assert m.matched == "ab c"
    m = StopMatcher(["ab c"], include=True)
    assert m.push(" ab") == ([" ab"], False)
    assert m.push(" cd") == ([" c"], True)


# -- scheduler and engine ------------------------------------------------------


def test_scheduler_is_fifo_and_survives_cancelled_waiters() -> None:
    async def main() -> None:
        s = Scheduler(1)
        await s.acquire()
        order: list[int] = []

        async def waiter(i: int) -> None:
            await s.acquire()
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(4)]
        await asyncio.sleep(0)
        assert (s.running, s.waiting) == (1, 4)
        tasks[1].cancel()
        await asyncio.sleep(0)
        assert s.waiting == 3
        for _ in range(3):
            s.release()
            await asyncio.sleep(0)
        assert order == [0, 2, 3]
        assert (s.running, s.waiting) == (1, 0)
        s.release()
        assert s.running == 0

    asyncio.run(main())


def test_generation_counts_tokens_and_frees_its_slot() -> None:
    async def main() -> None:
        eng = Engine(EngineSettings(ttft_ms=0, itl_ms=0, max_num_seqs=1))
        req = parse_completion({"prompt": "Hi", "max_tokens": 5}, Limits(model="m"))
        gen = eng.generation(req)
        text = await gen.complete()
        assert text == "".join(textgen.generate("Hi", 5))
        assert (gen.finish_reason, gen.completion_tokens) == ("length", 5)
        assert eng.scheduler.running == 0
        assert (eng.prompt_tokens_total, eng.generation_tokens_total) == (1, 5)
        assert eng.finished["length"] == 1 and eng.kv_tokens == 0

    asyncio.run(main())


# -- faults --------------------------------------------------------------------


def test_fault_counts_are_consumed_exactly() -> None:
    f = Faults()
    f.update({"error_status": 503, "error_count": 2})
    assert [f.decide(True).error_status for _ in range(3)] == [503, 503, None]
    f.update({"drop_after_tokens": 4, "drop_count": 1})
    assert f.decide(False).drop_after_tokens is None  # /v1/models is not dropped
    assert f.decide(True).drop_after_tokens == 4
    assert f.decide(True).drop_after_tokens is None
    f.update({"hang": True, "unhealthy_for_s": 0})
    assert f.decide(True).hang
    f.reset()
    assert f.decide(True) == f.decide(False)
    assert f.state()["hang"] is False


@pytest.mark.parametrize(
    "spec",
    [
        {"bogus": 1},
        {"error_status": 200},
        {"error_count": 2},
        {"drop_after_tokens": -1},
        {"drop_count": 1},
        {"hang": "yes"},
        {"unhealthy_for_s": -1},
        [],
    ],
)
def test_bad_fault_specs_are_rejected_without_side_effects(spec) -> None:
    f = Faults()
    with pytest.raises(FaultError):
        f.update(spec)
    assert f.state() == Faults().state()


# -- request validation ------------------------------------------------------------

LIMITS = Limits(model="m", max_model_len=32)


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"model": "other", "prompt": "x"}, "model", 404),
        ({"model": 3, "prompt": "x"}, "model", 400),
        ({"prompt": 3}, "prompt", 400),
        ({"prompt": ["a", "b"]}, "prompt", 400),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", 400),
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens", 400),
        ({"prompt": "x", "max_tokens": 40}, "max_tokens", 400),
        ({"prompt": "word " * 40}, "prompt", 400),
        ({"prompt": "x", "n": 2}, "n", 400),
        ({"prompt": "x", "stop": 5}, "stop", 400),
        ({"prompt": "x", "stream": "yes"}, "stream", 400),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream", 400),
        ({"prompt": "x", "temperature": "hot"}, "temperature", 400),
    ],
)
def test_bad_completion_requests(body: dict, param: str, status: int) -> None:
    with pytest.raises(BadRequest) as err:
        parse_completion(body, LIMITS)
    assert (err.value.param, err.value.status) == (param, status)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {
            "messages": [{"role": "user", "content": "x"}],
            "continue_final_message": True,
        },  # add_generation_prompt defaults to true: both set is an error, as in vLLM
    ],
)
def test_bad_chat_requests(body: dict) -> None:
    with pytest.raises(BadRequest) as err:
        parse_chat(body, LIMITS)
    assert err.value.status == 400


def test_request_defaults() -> None:
    limits = Limits(model="m", max_model_len=4096, default_max_tokens=100)
    assert parse_completion({"prompt": "x"}, limits).max_tokens == 16
    chat = parse_chat({"messages": [{"role": "user", "content": "x"}]}, limits)
    assert (chat.max_tokens, chat.model, chat.stream) == (100, "m", False)
    short = Limits(model="m", max_model_len=20, default_max_tokens=100)
    chat = parse_chat({"messages": [{"role": "user", "content": "x"}]}, short)
    assert chat.max_tokens == 20 - chat.prompt_tokens  # capped by the context
    assert (
        parse_chat(
            {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7}, limits
        ).max_tokens
        == 7
    )
    emb = parse_embedding({"input": ["a b", "c"]}, limits)
    assert (emb.inputs, emb.prompt_tokens) == (["a b", "c"], 3)
    with pytest.raises(BadRequest):
        parse_json(b"[1]")
