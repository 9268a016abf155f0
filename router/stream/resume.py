"""Resume a streaming completion on another node after its upstream broke.

Once the first bytes of an SSE stream have reached the client, a retry is no
longer invisible: the client already holds part of the answer. vLLM keeps no
state we could move, so the stream is continued instead: the text streamed so
far is handed to a healthy node as context, and the new node's output is
stitched onto the same client stream.

:class:`StreamResumer` is the I/O-free state machine for one streaming
request, composed of small pieces with one job each:

* :mod:`.resume_request`: whether the request can be resumed at all, its
  limits, and the continuation body (completions, and chat with
  ``continue_final_message``);
* :mod:`.resume_chunks`: one parsed chunk into client bytes (text and token
  counting, one role chunk, one finish chunk, ``[DONE]``), using
* :mod:`.stop_holdback`: holding back what could begin a ``stop`` string, so
  a stop string that straddles a seam still stops the stream exactly where
  the engine would have stopped it, and
* :mod:`.chunk_rewrite`: the first upstream's ``id``, ``created``, ``model``
  and ``system_fingerprint`` on every chunk, and ``usage`` summed across
  attempts;
* :mod:`.resume_backlog`: chunks relayed unparsed until their text is needed;
* :mod:`.resume_attempts`: the resume budget and each continuation's outcome.

The resumer itself feeds events to those pieces (one content chunk late while
stop strings are in play) and, after a break, decides how the stream goes
on: the continuation body, or the bytes that end the stream cleanly (the
OpenAI-shaped SSE error event, then ``data: [DONE]``). The relay
(:mod:`.stream`) does the I/O; the resume handler (:mod:`.resume_handler`)
connects the two.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .chunk_rewrite import ChunkRewriter, Progress
from .resume_attempts import Attempts
from .resume_backlog import UnparsedBacklog
from .resume_chunks import ChunkProcessor, ClientState
from .resume_request import (
    CHAT,
    RESUME_HEADER,
    RequestLimits,
    continuation_body,
    not_resumable,
)
from .sse import DONE, DONE_EVENT, error_and_done, event_data
from .stop_holdback import StopHoldback

log = logging.getLogger("spotrelay.router.stream.resume")

_DONE_STR = DONE.decode()


class StreamResumer:
    """Stitches the upstream attempts of one streaming request into one client stream.

    Feed every framed upstream event to :meth:`feed` and forward the result.
    Stop reading when :attr:`done` (the client got ``[DONE]``) or when
    :attr:`release` is set (the resumer wants this upstream closed). On any
    upstream failure, or after ``release``, call :meth:`after_break`; send its
    bytes to the client, then open its body (if any) on another node and keep
    feeding.
    """

    def __init__(
        self,
        path: str,
        body: dict[str, Any],
        *,
        resume_off: bool = False,
        enabled: bool = True,
        max_resumes: int = 2,
        request_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.body = body
        self.chat = path == CHAT
        self.request_id = request_id
        self.attempts = Attempts(max_resumes, clock)
        if not enabled or max_resumes <= 0:
            disabled: str | None = "resume is disabled by configuration"
        elif resume_off:
            disabled = f"resume is disabled by the {RESUME_HEADER} header"
        else:
            disabled = None
        reason = None if disabled else not_resumable(path, body)
        self.state = ClientState(request_id, disabled, reason)
        self.limits = RequestLimits.of(path, body if isinstance(body, dict) else {})
        self.progress = Progress()
        self.rewriter = ChunkRewriter(self.chat, body.get("model"), self.progress)
        self.holdback = StopHoldback(self.limits.stops, self.limits.include_stop)
        self.chunks = ChunkProcessor(
            self.limits, self.state, self.progress, self.rewriter, self.holdback, self.attempts
        )

        self._pending: tuple[dict[str, Any], bytes] | None = None  # see _dispatch
        # Chunks relayed unchanged and not parsed yet (see feed); None once every
        # chunk needs parsing (stop strings, or after a seam).
        self._backlog = None if self.limits.stops else UnparsedBacklog()

    # ------------------------------------------------------------------ state

    @property
    def resumable(self) -> bool:
        return self.state.resumable

    @property
    def text(self) -> str:
        """All text the upstream attempts generated so far (the continuation context)."""
        self._catch_up()
        if len(self.state.text) > 1:
            self.state.text = ["".join(self.state.text)]
        return self.state.text[0] if self.state.text else ""

    @property
    def attempt(self) -> int:
        return self.progress.attempt

    @property
    def total_tokens(self) -> int:
        self._catch_up()
        return self.progress.total_tokens

    # ------------------------------------------------------------------ feeding

    def feed(self, event: bytes) -> bytes:
        """Consume one framed upstream event of the current attempt; return the client bytes.

        Until something needs rewriting (the first attempt, no ``stop`` strings),
        content chunks and the finish chunk go out as they came and are only
        kept: they are parsed when the resumer needs their text (at a break, or
        at a chunk that is not plain, such as usage). An unbroken stream is
        parsed once: its finish chunk, alone.
        """
        if self.state.done or self.state.release:
            return b""
        if self._backlog is not None and self.resumable:
            sent = self._backlog.offer(event)
            if sent is not None:
                self.state.done = self._backlog.done_seen
                return sent
        self._catch_up()
        out: list[bytes] = []
        self._event(event, out)
        return b"".join(out)

    def _catch_up(self) -> None:
        """Parse the chunks the backlog kept (their bytes already went out)."""
        if self._backlog is not None and self._backlog.events:
            sink: list[bytes] = []
            for event in self._backlog.take():
                self._event(event, sink)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        payload = event_data(event)
        if payload is None:
            return  # a comment or an event without data: nothing to relay
        if payload in (DONE, _DONE_STR):
            self._flush_pending(out)
            if not (self.state.done or self.state.release):
                self.chunks.upstream_done(out)
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self.state.release = "upstream sent a malformed event"
        elif "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            msg = err.get("message") if isinstance(err, dict) else err
            self.state.release = f"upstream error event: {msg}"
        else:
            self._dispatch(obj, event, out)

    def _dispatch(self, obj: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        """Process ``obj``, one content chunk late when stop strings are in play.

        An engine that stops on a stop string may cut its last token short and
        say so only in the next event (the finish chunk). If the stream broke in
        between, a continuation from that cut text would go astray. So while
        stop strings are active, a content chunk is committed only once the
        engine has sent something after it; at a break, the uncommitted chunk is
        dropped and simply generated again by the continuation.
        """
        late = self.limits.stops and self.resumable and not self.progress.probing
        self._flush_pending(out)
        if self.state.done or self.state.release:
            return
        if late and _is_piece(obj, self.chat):
            self._pending = (obj, raw)
        else:
            self.chunks.chunk(obj, raw, out)

    def _flush_pending(self, out: list[bytes]) -> None:
        if self._pending is not None:
            obj, raw = self._pending
            self._pending = None
            self.chunks.chunk(obj, raw, out)

    # ------------------------------------------------------------------ after a break

    def after_break(self, why: str) -> tuple[bytes, dict[str, Any] | None]:
        """The current upstream is gone (or released): the bytes to send, then the
        continuation body to open (None: the stream ends with those bytes)."""
        if self.state.done:
            return b"", None
        self._catch_up()
        self._backlog = None  # from the first seam on, every chunk may need rewriting
        p = self.progress
        p.tokens_before += p.attempt_tokens
        p.attempt_tokens = 0
        p.last_usage = None
        self._pending = None  # never shown, never counted: the continuation regenerates it
        self.state.release = None
        self.attempts.broke(p.probing)
        if self.state.finished:
            # The content is complete; only usage (and [DONE]) may be missing.
            if not self.limits.include_usage or self.state.usage_sent:
                return self._end(DONE_EVENT)
            if p.orig_prompt_tokens is not None:
                p.probing = False
                return self._end(self.rewriter.usage_chunk(None) + DONE_EVENT)
        refusal = self.state.disabled or self.state.reason
        if refusal:
            self.record_outcome("disabled" if self.state.disabled else "not_resumable")
            return self._end(self.fail(f"upstream stream broke ({why}); not resumed: {refusal}"))
        if self.state.finished:
            return self._next_attempt(why, probe=True)
        max_tokens = self.limits.max_tokens
        if max_tokens is not None and max_tokens - self.total_tokens <= 0:
            return self._finish_locally(why)
        return self._next_attempt(why, probe=False)

    def hedge_body(self) -> dict[str, Any] | None:
        """The continuation a break now would open, without committing to it (a hedge).

        None where a break would not open one: the stream is done or finished (only
        usage may be missing), not resumable, out of resumes, or out of tokens. Changes
        nothing, so the original can still win: when the hedge's continuation wins
        instead, :meth:`after_break` makes the same body from the same state (nothing
        from the original reaches the resumer in between, see :mod:`.hedge`).
        """
        self._catch_up()  # the kept chunks say whether the answer finished already
        s = self.state
        if s.done or s.release or s.finished or not self.resumable:
            return None
        if self.attempts.used_up(False) is not None:
            return None
        max_tokens = self.limits.max_tokens
        if max_tokens is not None and max_tokens - self.total_tokens <= 0:
            return None
        return self.continuation_body()

    def _finish_locally(self, why: str) -> tuple[bytes, dict[str, Any] | None]:
        """Nothing is left to generate (``max_tokens`` reached): the router ends the stream."""
        self.record_outcome("ok")
        data = self.rewriter.finish_chunk("length", self.holdback.take_held())
        self.state.finished = True
        if not self.limits.include_usage:
            return self._end(data + DONE_EVENT)
        if self.progress.orig_prompt_tokens is not None:
            return self._end(data + self.rewriter.usage_chunk(None) + DONE_EVENT)
        more, body = self._next_attempt(why, probe=True)
        return data + more, body

    def _next_attempt(self, why: str, *, probe: bool) -> tuple[bytes, dict[str, Any] | None]:
        # Probes regenerate nothing (one token, discarded), so they have their own budget.
        used = self.attempts.used_up(probe)
        if used is not None:
            self.record_outcome("exhausted")
            what = "usage probe" if probe else "resume"
            message = f"upstream stream broke ({why}); gave up after {used} {what} attempt(s)"
            return self._end(self.fail(message))
        self.attempts.begin(probe)
        p = self.progress
        p.attempt += 1
        p.probing = probe
        p.probe_usage = None
        self.holdback.seam()
        if not probe:
            self.attempts.observer.resumed_tokens(self.total_tokens)
        return b"", self.continuation_body(probe=probe)

    def continuation_body(self, *, probe: bool = False) -> dict[str, Any]:
        """The request that continues the stream from the text generated so far."""
        return continuation_body(self.body, self.limits, self.text, self.total_tokens, probe=probe)

    def fail(self, message: str) -> bytes:
        """End the client stream with the SSE error event; returns its bytes."""
        log.warning(message, extra={"request_id": self.request_id})
        self.state.done = True
        self.state.failed = True
        self.attempts.end()
        return error_and_done(message)

    def _end(self, data: bytes) -> tuple[bytes, None]:
        self.state.done = True
        self.attempts.end()
        return data, None

    def record_outcome(self, outcome: str) -> None:
        self.attempts.record(outcome)


def _is_piece(obj: Mapping[str, Any], chat: bool) -> bool:
    """A chunk that only carries generated text (no finish, role or tool call)."""
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    if choice.get("finish_reason") or choice.get("index", 0):
        return False
    if not chat:
        return bool(choice.get("text"))
    delta = choice.get("delta")
    return isinstance(delta, dict) and bool(delta.get("content")) and delta.keys() <= {"content"}
