"""OpenAI-style client traffic for the demo, sent with the official ``openai`` client.

Requests arrive at a fixed average rate (Poisson arrivals, seeded) and mix
completions and chat, streaming and not (streaming chat only where every
node can resume it), and a share of Responses API calls
(``client.responses.create``, not streamed: a Responses stream cut by a hard
kill after its first event cannot be resumed, see docs/router.md). Each outcome is recorded from the
client's point of view, which is the only one that matters: a request counts
as failed if the SDK raised, a stream ended early, or — when the engine is
the simulator, whose text is deterministic — the text differs from what an
undisturbed engine would have produced (a duplicated or missing piece at a
failover seam is a failure too).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import openai

from . import textgen

PROMPTS = (
    "Explain why spot instances are cheap",
    "Write a haiku about preemption",
    "Summarise the life of a GPU node",
    "List three reasons to drain before shutdown",
    "Describe a river at night",
    "What does a router do when a node disappears",
)


@dataclass
class RequestRecord:
    """One client request as the client saw it."""

    kind: str  # "completion", "chat" or "responses"
    stream: bool
    started: float  # seconds since the run began
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    ok: bool = False
    error: str | None = None
    tokens: int = 0
    verified: bool | None = None  # None: not checkable (real engine)
    router: int = 0  # which router (index in the driver's list) it went to

    @property
    def finished(self) -> float:
        return self.started + self.latency_ms / 1000


@dataclass
class TrafficOptions:
    rps: float = 20.0
    stream_ratio: float = 0.5
    responses_ratio: float = 0.2  # share of Responses API calls (never streamed)
    max_tokens: int = 48
    verify_text: bool = True
    timeout_s: float = 60.0
    max_concurrency: int = 256
    # False when some node cannot resume a chat stream (no continue_final_message):
    # streaming requests then all go through completions, which resume on any engine.
    chat_streams: bool = True
    long_ratio: float = 0.0  # share of streams that are long generations (agent loops)
    long_max_tokens: int = 300


class _Call(NamedTuple):
    """One request about to be sent: the router's client, what to ask, where to record it."""

    client: openai.OpenAI
    prompt: str
    max_tokens: int
    record: RequestRecord
    start: float


class Rotation:
    """Which routers take new requests, round robin, as a load balancer's target group.

    Taking a router out (:meth:`remove`) stops new requests to it; the ones it
    has open finish (:meth:`in_flight`), as with a target's deregistration delay.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._serving = list(range(count))
        self._open = [0] * count
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            choices = self._serving or list(range(self.count))
            index = choices[self._next % len(choices)]
            self._next += 1
            self._open[index] += 1
            return index

    def release(self, index: int) -> None:
        with self._lock:
            self._open[index] -= 1

    def remove(self, index: int) -> None:
        with self._lock:
            if index in self._serving and len(self._serving) > 1:
                self._serving.remove(index)

    def add(self, index: int) -> None:
        with self._lock:
            if index not in self._serving:
                self._serving.append(index)
                self._serving.sort()

    def in_flight(self, index: int) -> int:
        with self._lock:
            return self._open[index]


@dataclass
class TrafficLog:
    """Thread-safe list of records plus live counters for the progress bar."""

    records: list[RequestRecord] = field(default_factory=list)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: RequestRecord) -> None:
        with self.lock:
            self.records.append(record)
            self.in_flight -= 1

    def counts(self) -> tuple[int, int, int]:
        """(finished, failed, in flight)."""
        with self.lock:
            failed = sum(1 for r in self.records if not r.ok)
            return len(self.records), failed, self.in_flight


class TrafficDriver:
    """Sends requests at ``rps`` until stopped; one thread per request in flight.

    With several base URLs (routers) requests go round robin over those in
    :attr:`rotation`, one OpenAI client per router.
    """

    def __init__(
        self,
        base_url: str | list[str],
        model: str,
        options: TrafficOptions,
        seed: int,
        api_key: str = "demo",
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.options = options
        self.model = model
        self.rng = random.Random(seed)
        self.log = TrafficLog()
        self._stop = threading.Event()
        self._t0 = 0.0
        self.clients = [
            openai.OpenAI(
                base_url=url.rstrip("/") + "/v1",
                api_key=api_key,
                max_retries=0,
                timeout=options.timeout_s,
            )
            for url in urls
        ]
        self.rotation = Rotation(len(urls))
        self._pool = ThreadPoolExecutor(
            max_workers=options.max_concurrency, thread_name_prefix="traffic"
        )
        self._thread: threading.Thread | None = None

    def start(self, t0: float) -> None:
        self._t0 = t0
        self._thread = threading.Thread(target=self._arrivals, name="arrivals", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout_s: float = 60.0) -> None:
        """Stop new arrivals and wait for the requests in flight to finish."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=False)
        del drain_timeout_s  # requests carry their own client timeout
        for client in self.clients:
            client.close()

    def _arrivals(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.rng.expovariate(self.options.rps)
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            stream = self.rng.random() < self.options.stream_ratio
            kind = "chat" if self.rng.random() < 0.5 else "completion"
            if stream and not self.options.chat_streams:
                kind = "completion"
            if self.rng.random() < self.options.responses_ratio:
                kind, stream = "responses", False
            prompt = self.rng.choice(PROMPTS) + f" (request {self.rng.randrange(10**6)})"
            max_tokens = self.rng.randint(self.options.max_tokens // 2, self.options.max_tokens)
            if stream and self.options.long_ratio and self.rng.random() < self.options.long_ratio:
                max_tokens = self.options.long_max_tokens
            with self.log.lock:
                self.log.in_flight += 1
            self._pool.submit(self._one, kind, stream, prompt, max_tokens)

    def _one(self, kind: str, stream: bool, prompt: str, max_tokens: int) -> None:
        router = self.rotation.acquire()
        record = RequestRecord(kind, stream, time.monotonic() - self._t0, router=router)
        start = time.monotonic()
        try:
            send: Callable[[_Call], str] = {
                "chat": self._chat,
                "completion": self._completion,
                "responses": self._responses,
            }[kind]
            text = send(_Call(self.clients[router], prompt, max_tokens, record, start))
            record.ok = True
            if self.options.verify_text:
                record.verified = text == expected_text(kind, prompt, max_tokens)
                if not record.verified:
                    record.ok = False
                    record.error = "text differs from an undisturbed run"
        except openai.OpenAIError as exc:
            record.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            self.rotation.release(router)
        record.latency_ms = (time.monotonic() - start) * 1000
        self.log.add(record)

    def _completion(self, call: _Call) -> str:
        client, prompt, max_tokens, record, start = call
        if not record.stream:
            resp = client.completions.create(model=self.model, prompt=prompt, max_tokens=max_tokens)
            record.tokens = resp.usage.completion_tokens if resp.usage else 0
            return resp.choices[0].text
        parts: list[str] = []
        finish = None
        for chunk in client.completions.create(
            model=self.model, prompt=prompt, max_tokens=max_tokens, stream=True
        ):
            if chunk.choices:
                _first_token(record, start)
                parts.append(chunk.choices[0].text or "")
                finish = chunk.choices[0].finish_reason or finish
        return _stream_result(parts, finish, record)

    def _chat(self, call: _Call) -> str:
        client, prompt, max_tokens, record, start = call
        messages: list[Any] = [{"role": "user", "content": prompt}]
        if not record.stream:
            resp = client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens
            )
            record.tokens = resp.usage.completion_tokens if resp.usage else 0
            return resp.choices[0].message.content or ""
        parts: list[str] = []
        finish = None
        for chunk in client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, stream=True
        ):
            if chunk.choices:
                delta = chunk.choices[0].delta.content or ""
                if delta:
                    _first_token(record, start)
                parts.append(delta)
                finish = chunk.choices[0].finish_reason or finish
        return _stream_result(parts, finish, record)

    def _responses(self, call: _Call) -> str:
        client, prompt, max_tokens, record, _ = call
        resp = client.responses.create(model=self.model, input=prompt, max_output_tokens=max_tokens)
        if resp.status not in ("completed", "incomplete") or resp.error is not None:
            raise RuntimeError(f"response {resp.status}: {resp.error}")
        record.tokens = resp.usage.output_tokens if resp.usage else 0
        return resp.output_text


def _first_token(record: RequestRecord, start: float) -> None:
    if record.ttft_ms is None:
        record.ttft_ms = (time.monotonic() - start) * 1000


def _stream_result(parts: list[str], finish: str | None, record: RequestRecord) -> str:
    """A stream without a final ``finish_reason`` was cut short: the client lost text."""
    if finish is None:
        raise RuntimeError("stream ended without a finish_reason")
    record.tokens = sum(1 for p in parts if p)
    return "".join(parts)


def expected_text(kind: str, prompt: str, max_tokens: int) -> str:
    """What the simulator produces for this request when nothing goes wrong."""
    if kind in ("chat", "responses"):  # the Responses input renders as one user message
        prefix = textgen.render_chat(
            [{"role": "user", "content": prompt}], add_generation_prompt=True
        )
    else:
        prefix = prompt
    return "".join(textgen.generate(prefix, max_tokens))
