"""``spotrelay sim vllm`` over real HTTP: the official ``openai`` client, raw SSE,
metrics, queueing, disconnects and the control API.

One simulator (fast timing) serves the read-only tests; tests that change
faults or need other flags start their own. Fault tests live in
``test_sim_vllm_faults.py``.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from spotrelay.sim import textgen
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import Service, start_sim_vllm
from tests.support.sse import sse_json

MODEL = "sim-model"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    group = ProcessGroup()
    logdir = tmp_path_factory.mktemp("sim-logs")
    try:
        yield start_sim_vllm(
            group, logdir, "--ttft-ms", "5", "--itl-ms", "1", "--default-max-tokens", "12"
        )
    finally:
        group.stop_all()


@pytest.fixture(scope="module")
def client(sim: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0, timeout=10)


def metrics(url: str) -> dict[str, float]:
    """Samples of /metrics as {"name{label=value,...}": value} plus plain names."""
    text = requests.get(url + "/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
            out.setdefault(s.name, 0.0)
            out[s.name] += s.value
    return out


def chat_messages(text: str = "Tell me about spot instances.") -> list[dict]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


# -- the OpenAI client -------------------------------------------------------------


def test_completion_with_the_openai_client(client: openai.OpenAI) -> None:
    prompt = "The quick brown fox"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0.7)
    assert out.choices[0].text == "".join(textgen.generate(prompt, 7))
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == textgen.count_tokens(prompt)
    assert (out.usage.completion_tokens, out.usage.total_tokens) == (7, 7 + 4)
    assert out.id.startswith("cmpl-") and out.model == MODEL
    # completions default to 16 tokens, like vLLM
    assert client.completions.create(model=MODEL, prompt=prompt).usage.completion_tokens == 16


def test_streaming_completion_one_token_per_chunk(client: openai.OpenAI) -> None:
    prompt = "Once upon a time"
    stream = client.completions.create(
        model=MODEL,
        prompt=prompt,
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
        seed=1,
        logprobs=None,
        user="u",
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert texts == textgen.generate(prompt, 9)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    assert chunks[-1].usage.prompt_tokens == textgen.count_tokens(prompt)


def test_chat_with_the_openai_client(client: openai.OpenAI) -> None:
    msgs = chat_messages()
    out = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10)
    prompt = textgen.render_chat(msgs)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == "".join(textgen.generate(prompt, 10))
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == textgen.count_tokens(prompt)
    assert out.usage.completion_tokens == 10
    # without max_tokens: --default-max-tokens (12 here)
    out = client.chat.completions.create(model=MODEL, messages=msgs)
    assert out.usage.completion_tokens == 12
    out = client.chat.completions.create(model=MODEL, messages=msgs, max_completion_tokens=3)
    assert out.usage.completion_tokens == 3


def test_streaming_chat_shapes(client: openai.OpenAI) -> None:
    msgs = chat_messages("Hi")
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=msgs,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert content == textgen.generate(textgen.render_chat(msgs), 6)
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert not chunks[-2].choices[0].delta.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")


def test_raw_sse_ends_with_done(sim: Service) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
    with requests.post(sim.url + "/v1/completions", json=body, stream=True, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = sse_json(r)
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["text"] for e in events[:3]] == textgen.generate("x", 3)
    assert events[3]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in events[3]  # no include_usage: no usage chunk
    assert len(events) == 5


def test_continuous_usage_stats(sim: Service) -> None:
    body = {
        "model": MODEL,
        "prompt": "x",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with requests.post(sim.url + "/v1/completions", json=body, stream=True, timeout=10) as r:
        events = sse_json(r)
    assert [e["usage"]["completion_tokens"] for e in events[:3]] == [1, 2, 3]


# -- determinism through HTTP ---------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 5, 11])
def test_completion_continuation_over_http(client: openai.OpenAI, k: int) -> None:
    prompt, n = "Resume me, please:", 12
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=n)
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=n, stream=True)
    pieces = [c.choices[0].text for c in stream if c.choices[0].finish_reason is None]
    assert "".join(pieces) == full.choices[0].text
    head = "".join(pieces[:k])
    rest = client.completions.create(model=MODEL, prompt=prompt + head, max_tokens=n - k)
    assert head + rest.choices[0].text == full.choices[0].text
    # a resuming router recovers the original prompt_tokens from the resumed request's
    assert rest.usage.prompt_tokens - k == full.usage.prompt_tokens


@pytest.mark.parametrize("k", [0, 1, 4, 9])
def test_chat_continuation_over_http(client: openai.OpenAI, k: int) -> None:
    msgs, n = chat_messages("Explain failover."), 10
    stream = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=n,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks[1:-2]]
    full_usage = chunks[-1].usage
    partial = "".join(pieces[:k])
    rest = client.chat.completions.create(
        model=MODEL,
        messages=[*msgs, {"role": "assistant", "content": partial}],
        max_tokens=n - k,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert partial + rest.choices[0].message.content == "".join(pieces)
    assert rest.usage.prompt_tokens - k == full_usage.prompt_tokens
    assert rest.usage.completion_tokens + k == full_usage.completion_tokens


# -- stop, embeddings, models ---------------------------------------------------------


def test_stop_strings_truncate_and_report_stop(client: openai.OpenAI, sim: Service) -> None:
    prompt = "Stop here:"
    text = "".join(textgen.generate(prompt, 20))
    words = text.split()
    stop = f"{words[3]} {words[4]}"
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=20, stop=stop)
    assert out.choices[0].text == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_extra.get("stop_reason") == stop
    assert out.usage.completion_tokens < 20
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=20, stop=["zzz", stop], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == out.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 20,
        "stop": stop,
        "include_stop_str_in_output": True,
    }
    r = requests.post(sim.url + "/v1/completions", json=body, timeout=10).json()
    assert r["choices"][0]["text"] == text[: text.index(stop) + len(stop)]


def test_embeddings(client: openai.OpenAI) -> None:
    out = client.embeddings.create(model=MODEL, input=["hello world", "hello world", "other"])
    vecs = [d.embedding for d in out.data]
    assert len(vecs) == 3 and len(vecs[0]) == 256
    assert vecs[0] == vecs[1] != vecs[2]
    assert out.usage.prompt_tokens == 5
    one = client.embeddings.create(model=MODEL, input="hello world", dimensions=8)
    assert len(one.data[0].embedding) == 8
    # base64: little-endian float32, as vLLM and OpenAI send it
    b64 = client.embeddings.create(model=MODEL, input="other", encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vecs[2], abs=1e-6)


def test_models_health_version_ping(client: openai.OpenAI, sim: Service) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_model_len"] == 4096
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200
    assert requests.get(sim.url + "/ping", timeout=5).status_code == 200
    assert "version" in requests.get(sim.url + "/version", timeout=5).json()


# -- bad input ---------------------------------------------------------------------


def test_bad_input_gets_openai_errors(client: openai.OpenAI, sim: Service) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x")
    assert "does not exist" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", n=2)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="word " * 5000)
    assert "maximum context length" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages="hi")  # type: ignore[arg-type]
    r = requests.post(
        sim.url + "/v1/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": "3"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    # vLLM treats a missing model as the served one
    r = requests.post(sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 200 and r.json()["model"] == MODEL


# -- metrics and stats ---------------------------------------------------------------


def test_metrics_have_vllm_names_types_and_labels(client: openai.OpenAI, sim: Service) -> None:
    before = metrics(sim.url)
    client.completions.create(model=MODEL, prompt="count me", max_tokens=4)
    after = metrics(sim.url)
    labels = f"engine=0,model_name={MODEL}"
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"vllm:{gauge}{{{labels}}}" in after
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 4
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 2
    key = f"vllm:request_success_total{{engine=0,finished_reason=length,model_name={MODEL}}}"
    assert after[key] - before.get(key, 0) == 1
    text = requests.get(sim.url + "/metrics", timeout=5).text
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert "# TYPE vllm:generation_tokens_total counter" in text


def test_stats_record_request_ids(sim: Service) -> None:
    rid = f"test-{time.monotonic_ns()}"
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True}
    with requests.post(
        sim.url + "/v1/completions",
        json=body,
        headers={"X-Request-ID": rid},
        stream=True,
        timeout=10,
    ) as r:
        assert r.headers["X-Request-ID"] == rid
        sse_json(r)
    stats = requests.get(sim.url + "/_control/stats", timeout=5).json()
    rec = next(x for x in stats["recent"] if x["request_id"] == rid)
    assert rec["path"] == "/v1/completions" and rec["stream"] is True
    assert (rec["status"], rec["outcome"], rec["model"]) == (200, "completed", MODEL)
    assert rec["completion_tokens"] == 2
    assert stats["per_path"]["/v1/completions"] >= 1
    assert stats["requests_total"] >= stats["per_path"]["/v1/completions"]
    assert stats["active"] == 0


# -- capacity, queueing and disconnects ---------------------------------------------------


def _gauges(url: str) -> tuple[float, float]:
    m = metrics(url)
    return m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]


def test_requests_queue_past_max_num_seqs_then_drain(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(procs, logdir, "--max-num-seqs", "2", "--ttft-ms", "1", "--itl-ms", "25")
    c = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=30)
    done: list[float] = []

    def call(i: int) -> None:
        out = c.completions.create(model=MODEL, prompt=f"q{i}", max_tokens=30)
        assert out.usage.completion_tokens == 30
        done.append(time.monotonic())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    wait_until(lambda: _gauges(sim.url) == (2, 3), timeout=10, what="2 running, 3 waiting")
    kv = metrics(sim.url)["vllm:kv_cache_usage_perc"]
    assert 0 < kv <= 1
    for t in threads:
        t.join(30)
    assert len(done) == 5
    wait_until(lambda: _gauges(sim.url) == (0, 0), timeout=10, what="queue drained")
    # 5 requests through 2 slots of ~0.75 s each: the last waited two rounds
    stats = requests.get(sim.url + "/_control/stats", timeout=5).json()
    durations = sorted(r["duration_ms"] for r in stats["recent"])
    assert durations[-1] > 2 * durations[0]


def test_client_disconnect_frees_the_slot(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(procs, logdir, "--max-num-seqs", "1", "--ttft-ms", "1", "--itl-ms", "20")
    body = json.dumps({"model": MODEL, "prompt": "long", "max_tokens": 2000, "stream": True})
    host, port = "127.0.0.1", sim.port

    def open_stream() -> socket.socket:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        return s

    running = open_stream()
    assert b"200 OK" in running.recv(4096)  # headers (and maybe tokens): it is running
    queued = open_stream()
    wait_until(lambda: _gauges(sim.url) == (1, 1), timeout=10, what="1 running, 1 waiting")
    queued.close()  # a waiting client leaves the queue
    wait_until(lambda: _gauges(sim.url) == (1, 0), timeout=10, what="waiting back to 0")
    running.close()  # a running client frees its slot at once
    wait_until(lambda: _gauges(sim.url) == (0, 0), timeout=5, what="running back to 0")
    m = metrics(sim.url)
    assert (
        m[f"vllm:request_success_total{{engine=0,finished_reason=abort,model_name={MODEL}}}"] == 1
    )
    stats = requests.get(sim.url + "/_control/stats", timeout=5).json()
    assert sorted(r["outcome"] for r in stats["recent"]) == ["aborted", "aborted"]
    # and the slot really is free
    c = openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=10)
    assert c.completions.create(model=MODEL, prompt="x", max_tokens=1).usage.completion_tokens == 1


def test_timing_follows_ttft_and_itl(procs: ProcessGroup, logdir: Path) -> None:
    sim = start_sim_vllm(procs, logdir, "--ttft-ms", "200", "--itl-ms", "50")
    body = {"model": MODEL, "prompt": "t", "max_tokens": 6, "stream": True}
    t0 = time.monotonic()
    stamps = []
    with requests.post(sim.url + "/v1/completions", json=body, stream=True, timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: {"):
                stamps.append(time.monotonic())
    ttft = stamps[0] - t0
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps[:6]))
    # Tokens are never early: the 6th comes >= ttft + 5 * itl after the request was sent.
    assert 0.199 <= ttft < 1.0
    assert stamps[5] - t0 >= 0.2 + 5 * 0.05 - 0.002
    assert 0.04 <= gaps[2] <= 0.1, gaps  # the median gap is the ITL (tolerant of a busy CI)
