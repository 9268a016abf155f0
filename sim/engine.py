"""The simulated engine: a FIFO scheduler with ``max_num_seqs`` slots, timed
token generation, stop strings, and the counters behind ``/metrics``.

Timing follows vLLM's shape: a request waits in FIFO order until one of
``max_num_seqs`` slots is free; its first token comes ``ttft`` after it got
the slot, then one token every ``itl``. Token times are absolute deadlines
from the slot time, so a late wake-up does not push later tokens back.
Two things hold decode on purpose: :class:`DecodePauses` (a long prefill of
another request stalling every running stream for hundreds of milliseconds,
as on a real GPU; what a router's stall detection must not mistake for a
dead node) and ``Engine.stalled`` (the stall fault: a hung GPU, tokens stop
while HTTP, ``/health`` and ``/metrics`` go on answering).
Nothing here knows about HTTP: the server turns pieces into SSE chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .prefix_cache import CacheSettings, PrefixCache
from .textgen import TokenStream, tokenize
from .vllm_protocol import GenerationRequest

log = logging.getLogger("spotrelay.sim.vllm")


@dataclass
class EngineSettings:
    model: str = "sim-model"
    ttft_ms: float = 50.0
    itl_ms: float = 10.0
    max_num_seqs: int = 256
    max_model_len: int = 4096
    kv_cache_tokens: int = 65536
    prefix_cache: CacheSettings = field(default_factory=CacheSettings)
    decode_pause_ms: float = 0.0
    decode_pause_every_s: float = 0.0


#: how often a stalled stream looks again whether the stall fault was lifted
STALL_POLL_S = 0.05


@dataclass(frozen=True)
class DecodePauses:
    """Decode held for ``pause_s`` once every ``every_s``, from ``origin`` on (loop time).

    The windows are ``[origin + k * every_s, origin + k * every_s + pause_s)``.
    A token due inside one comes at its end, and every later token of the
    stream keeps its spacing from there (the whole batch waited), which is
    what a long prefill of another request does to vLLM's running streams.
    Off when either figure is 0.
    """

    pause_s: float = 0.0
    every_s: float = 0.0
    origin: float = 0.0

    @property
    def on(self) -> bool:
        return self.pause_s > 0 and self.every_s > 0

    def hold_until(self, t: float) -> float | None:
        """The end of the pause ``t`` falls in; None when decode runs at ``t``."""
        if not self.on:
            return None
        start = self.origin + math.floor((t - self.origin) / self.every_s) * self.every_s
        end = start + self.pause_s
        return end if start <= t < end else None

    def due(self, t: float) -> float:
        """When a token due at ``t`` really comes."""
        held = self.hold_until(t)
        return t if held is None else held

    def finish_time(self, first: float, n: int, itl: float) -> float:
        """When the ``n``-th token comes, the first being due at ``first``."""
        t = self.due(first)
        for _ in range(max(0, n - 1)):
            t = self.due(t + itl)
        return t

    def tokens_by(self, first: float, n: int, itl: float, now: float) -> int:
        """How many of ``n`` tokens (the first due at ``first``) have come by ``now``."""
        done, t = 0, self.due(first)
        while done < n and t <= now:
            done += 1
            t = self.due(t + itl)
        return done


class Scheduler:
    """At most ``capacity`` running; the rest wait in FIFO order.

    A waiter that is cancelled (client gone) leaves the queue; a slot granted
    to a waiter that was cancelled in the same instant is passed on.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self.capacity and not self._waiters:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter: running unchanged
                return
        self.running -= 1


class StopMatcher:
    """Finds stop strings in generated text, holding back what could start one.

    Tokens are released whole (one streamed chunk per token) as soon as no
    stop string can begin inside them: only a tail of the text that is a
    prefix of some stop string waits for the next token. When a stop string
    is found the output is cut before it (or after it with
    ``include_stop_str_in_output``), the only time a piece is shorter than
    its token.
    """

    def __init__(self, stops: list[str], include: bool) -> None:
        self.stops = stops
        self.include = include
        self.keep = max(len(s) for s in stops) - 1  # context a new match can start in
        self.window = ""
        self.total = 0  # chars generated so far
        self.released = 0  # chars released so far
        self.pending: deque[str] = deque()
        self.matched: str | None = None  # the stop string found

    def _hold(self, buf: str) -> int:
        """Length of the longest tail of ``buf`` that could start a stop string."""
        if self.include:
            return 0  # output runs to the end of the stop string: nothing to take back
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:n]):
                    hold = n
                    break
        return hold

    def push(self, token: str) -> tuple[list[str], bool]:
        """Add a token; returns (pieces to release now, stopped)."""
        buf = self.window + token
        base = self.total - len(self.window)
        self.total += len(token)
        self.pending.append(token)
        best = -1
        best_len = 0
        for stop in self.stops:
            idx = buf.find(stop)
            if idx != -1 and (best == -1 or idx < best):
                best, best_len = idx, len(stop)
                self.matched = stop
        if best != -1:
            cut = base + best + (best_len if self.include else 0)
            out = []
            pos = self.released
            for tok in self.pending:
                if pos >= cut:
                    break
                piece = tok[: cut - pos]
                if piece:
                    out.append(piece)
                pos += len(tok)
            self.pending.clear()
            return out, True
        self.window = buf[-self.keep :] if self.keep else ""
        limit = self.total - self._hold(buf)
        out = []
        while self.pending and self.released + len(self.pending[0]) <= limit:
            tok = self.pending.popleft()
            self.released += len(tok)
            out.append(tok)
        return out, False

    def flush(self) -> list[str]:
        out = list(self.pending)
        self.pending.clear()
        return out


class Engine:
    """Scheduler plus the counters vLLM exports (read at scrape time, O(1) per token)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.scheduler = Scheduler(settings.max_num_seqs)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.kv_tokens = 0
        self.finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.ticker = Ticker()
        self.prefix_cache = PrefixCache(settings.prefix_cache)
        # Each process pauses at its own phase: engines on one host share a
        # monotonic clock, and real GPUs do not pause in step.
        every_s = settings.decode_pause_every_s
        self.pauses = DecodePauses(
            settings.decode_pause_ms / 1000.0, every_s, random.uniform(0.0, every_s)
        )
        self.stalled = False  # the stall fault: no token until it is lifted
        self._frozen_count: int | None = None  # the token counter while stalled
        # Non-streaming generations under way: (first token due, tokens, itl).
        self._unary: dict[int, tuple[float, int, float]] = {}

    def set_stalled(self, stalled: bool, now: float) -> None:
        """Start or lift the stall fault at ``now`` (loop time): the counter stands still."""
        if stalled and not self.stalled:
            self._frozen_count = self.generated_tokens(now)
        elif not stalled:
            self._frozen_count = None
        self.stalled = stalled

    def generated_tokens(self, now: float) -> int:
        """``vllm:generation_tokens_total`` at ``now`` (loop time).

        Streams count each token as it is sent; a non-streaming answer is
        computed at once but counted token by token as its time passes, as
        vLLM counts every decode step: an agent reading the counter while a
        long non-streaming request runs must see it move.
        """
        if self._frozen_count is not None:
            return self._frozen_count  # stalled: a waiting answer's tokens do not come
        partial = sum(self.pauses.tokens_by(*spec, now) for spec in self._unary.values())
        return self.generation_tokens_total + partial

    @property
    def kv_cache_usage(self) -> float:
        return min(1.0, self.kv_tokens / max(1, self.settings.kv_cache_tokens))

    def generation(self, req: GenerationRequest) -> Generation:
        return Generation(self, req)


class Generation:
    """One request's life in the engine.

    Streaming: ``t0 = await admit()`` (waits for a slot), ``start()``, then
    ``step()`` once per token at its due time (the :class:`Ticker` calls it),
    and ``finish()`` in a ``finally``. Non-streaming: :meth:`complete`.
    Afterwards ``finish_reason`` is ``"stop"``, ``"length"`` or ``None``
    (aborted) and ``completion_tokens`` counts every generated token
    (including one that held a stop string).
    """

    def __init__(self, engine: Engine, req: GenerationRequest) -> None:
        self.engine = engine
        self.req = req
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None  # the stop string that ended it, if any
        self.completion_tokens = 0
        self.admitted = False
        self._tokens: TokenStream | None = None
        self._matcher: StopMatcher | None = None
        self._prompt: list[str] = []
        self._generated: list[str] = []
        self.cached_tokens = 0  # prompt tokens the prefix cache held
        self.ttft_s = engine.settings.ttft_ms / 1000.0  # plus the uncached prefill, once admitted

    async def admit(self) -> float:
        """Wait for a slot (FIFO); returns the loop time the slot was granted.

        The prompt is looked up in the prefix cache here, as vLLM's scheduler
        does when it schedules a request: what is not cached adds prefill time
        to the first token (``ttft_s``).
        """
        eng = self.engine
        await eng.scheduler.acquire()
        self.admitted = True
        eng.prompt_tokens_total += self.req.prompt_tokens
        eng.kv_tokens += self.req.prompt_tokens
        cache = eng.prefix_cache
        if cache.enabled:
            self._prompt = tokenize(self.req.prompt)
            self.cached_tokens = cache.lookup(self._prompt)
            cache.insert(self._prompt)
            self.ttft_s += cache.prefill_s(len(self._prompt), self.cached_tokens)
        return asyncio.get_running_loop().time()

    def finish(self) -> None:
        """Give the slot back (idempotent); counts the request as finished or aborted."""
        if not self.admitted:
            return
        self.admitted = False
        eng = self.engine
        eng.kv_tokens -= self.req.prompt_tokens + self.completion_tokens
        eng.finished[self.finish_reason or "abort"] += 1
        eng.scheduler.release()
        if self._generated and eng.prefix_cache.enabled:
            # vLLM caches the blocks a request filled while decoding, too: the
            # next turn of a conversation starts with this prompt and answer.
            eng.prefix_cache.insert(self._prompt + self._generated)

    def start(self) -> None:
        self._tokens = TokenStream(self.req.prompt)
        if self.req.stop:
            self._matcher = StopMatcher(self.req.stop, self.req.include_stop_str_in_output)

    def step(self) -> tuple[list[str], bool]:
        """Generate one token: (text pieces to send now, finished)."""
        assert self._tokens is not None, "start() first"
        token = self._tokens.next()
        self.completion_tokens += 1
        self._generated.append(token)
        eng = self.engine
        eng.generation_tokens_total += 1
        eng.kv_tokens += 1
        last = self.completion_tokens >= self.req.max_tokens
        matcher = self._matcher
        if matcher is None:
            if last:
                self.finish_reason = "length"
            return [token], last
        pieces, stopped = matcher.push(token)
        if stopped:
            self.finish_reason, self.stop_reason = "stop", matcher.matched
            return pieces, True
        if last:
            pieces.extend(matcher.flush())
            self.finish_reason = "length"
        return pieces, last

    async def complete(self, give_up_after_tokens: int | None = None) -> str | None:
        """The whole output after the time it takes to generate; ``None`` if given up.

        ``give_up_after_tokens`` (the drop fault) waits until that many tokens
        would have been generated and returns ``None`` (finish_reason stays None).
        Tokens are computed at once and the generation time slept in one go:
        the counters advance at the end.
        """
        loop = asyncio.get_running_loop()
        eng = self.engine
        try:
            t0 = await self.admit()
            ttft = self.ttft_s
            itl = eng.settings.itl_ms / 1000.0
            if give_up_after_tokens is not None:
                n = min(give_up_after_tokens, self.req.max_tokens)
                end = eng.pauses.finish_time(t0 + ttft, n, itl)
                await asyncio.sleep(max(0.0, end - loop.time()))
                return None
            tokens = TokenStream(self.req.prompt)
            matcher = (
                StopMatcher(self.req.stop, self.req.include_stop_str_in_output)
                if self.req.stop
                else None
            )
            out: list[str] = []
            reason = "length"
            for _ in range(self.req.max_tokens):
                token = tokens.next()
                self.completion_tokens += 1
                self._generated.append(token)
                if matcher is None:
                    out.append(token)
                    continue
                pieces, stopped = matcher.push(token)
                out.extend(pieces)
                if stopped:
                    reason, self.stop_reason = "stop", matcher.matched
                    break
            else:
                if matcher is not None:
                    out.extend(matcher.flush())
            n = self.completion_tokens
            end = eng.pauses.finish_time(t0 + ttft, n, itl)
            eng._unary[id(self)] = spec = (t0 + ttft, n, itl)
            done = 0
            try:
                await asyncio.sleep(max(0.0, end - loop.time()))
                while eng.stalled:
                    await asyncio.sleep(STALL_POLL_S)
                done = n
            finally:
                del eng._unary[id(self)]
                # An aborted answer keeps what it had generated: a counter never goes back.
                eng.generation_tokens_total += done or eng.pauses.tokens_by(*spec, loop.time())
            eng.kv_tokens += n
            self.finish_reason = reason
            return "".join(out)
        finally:
            self.finish()

    async def hold_slot(self, seconds: float) -> None:
        """Occupy a slot for ``seconds`` (embeddings: a prefill, no decode)."""
        loop = asyncio.get_running_loop()
        try:
            t0 = await self.admit()
            await asyncio.sleep(max(0.0, t0 + seconds - loop.time()))
            self.finish_reason = "stop"
        finally:
            self.finish()


Job = Callable[[float], float | None]


class Ticker:
    """One task that runs every stream's next step at its due time.

    A job is called with its due time and returns the next due time, or
    ``None`` when it is done. Compared with a sleeping task per stream this
    saves a future, a timer handle and a task switch per token, which is what
    lets one process keep 1,000 streams on time. Jobs due within ``slack`` of
    now run in the same pass.
    """

    LATE_BUCKETS = 1001  # whole milliseconds, the last one is ">= 1 s"

    def __init__(self, slack: float = 0.0005) -> None:
        self.slack = slack
        # How late each step ran, in ms: the simulator's own view of its timing.
        self.late_ms = [0] * self.LATE_BUCKETS
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, due: float, job: Job) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), job))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def __len__(self) -> int:
        return len(self._heap)

    def lateness(self) -> dict[str, float | int]:
        """Steps run and their lateness percentiles (ms, 1 ms resolution)."""
        total = sum(self.late_ms)
        out: dict[str, float | int] = {"steps": total}
        for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
            seen, rank = 0, q * total
            for ms, count in enumerate(self.late_ms):
                seen += count
                if total and seen >= rank:
                    out[name] = ms
                    break
            else:
                out[name] = 0
        out["max_ms"] = max((i for i, c in enumerate(self.late_ms) if c), default=0)
        return out

    def reset_lateness(self) -> None:
        self.late_ms = [0] * self.LATE_BUCKETS

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        top = self.LATE_BUCKETS - 1
        while True:
            now = loop.time()
            horizon = now + self.slack
            while heap and heap[0][0] <= horizon:
                due, _, job = heapq.heappop(heap)
                late = int((loop.time() - due) * 1000.0)
                self.late_ms[top if late > top else late if late > 0 else 0] += 1
                try:
                    nxt = job(due)
                except Exception:  # a broken job must not stop every other stream
                    log.exception("stream step failed")
                    continue
                if nxt is not None:
                    heapq.heappush(heap, (nxt, next(self._seq), job))
            self._wake = wake = loop.create_future()
            timer = loop.call_at(heap[0][0], _resolve, wake) if heap else None
            await wake
            if timer is not None:
                timer.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
