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
* :mod:`.stop_holdback`: holding back what could begin a ``stop`` string, so
  a stop string that straddles a seam still stops the stream exactly where
  the engine would have stopped it;
* :mod:`.chunk_rewrite`: the first upstream's ``id``, ``created``, ``model``
  and ``system_fingerprint`` on every chunk, and ``usage`` summed across
  attempts.

The resumer itself tracks the text and tokens so far, keeps one assistant
role chunk and one finish chunk, and after a break returns the continuation
body (or the bytes that end the stream cleanly: the OpenAI-shaped SSE error
event, then ``data: [DONE]``). The relay (:mod:`.stream`) does the I/O; the
resume handler (:mod:`.resume_handler`) connects the two.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from spotrelay.router.chunk_rewrite import ChunkRewriter, Progress
from spotrelay.router.finish import unfinished
from spotrelay.router.resume_request import (
    CHAT,
    RESUME_HEADER,
    RequestLimits,
    continuation_body,
    not_resumable,
)
from spotrelay.router.sse import DONE, DONE_EVENT, error_and_done, event_data, is_done
from spotrelay.router.stop_holdback import StopHoldback

log = logging.getLogger("spotrelay.router.resume")

_DONE_STR = DONE.decode()

#: :attr:`StreamResumer.release` when the router itself ended the stream at a stop
#: string that began before a seam (the upstream did nothing wrong).
SEAM_STOP = "stop string completed across a seam"

#: :attr:`StreamResumer.release` when an upstream ended its stream before a
#: finish_reason: the break label ``truncated``.
TRUNCATED = "truncated: the stream ended before a finish_reason"

#: finish reasons that mean "the engine gave up on this request", not a real end.
_ABORT_FINISH = frozenset({"abort", "error"})


class ResumeObserver(Protocol):
    """Where the resumer reports what happened (the router's metrics)."""

    def outcome(self, outcome: str) -> None:
        """One resume decision: ok, failed, exhausted, not_resumable, disabled, ..."""

    def resumed_tokens(self, tokens: int) -> None:
        """Tokens already generated that a continuation carries over."""

    def seam(self, seconds: float) -> None:
        """Time from the break to the first new content reaching the client."""


class NullObserver:
    def outcome(self, outcome: str) -> None:
        pass

    def resumed_tokens(self, tokens: int) -> None:
        pass

    def seam(self, seconds: float) -> None:
        pass


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
        self.max_resumes = max_resumes
        self._clock = clock
        if not enabled or max_resumes <= 0:
            self.disabled: str | None = "resume is disabled by configuration"
        elif resume_off:
            self.disabled = f"resume is disabled by the {RESUME_HEADER} header"
        else:
            self.disabled = None
        self.reason: str | None = None if self.disabled else not_resumable(path, body)
        self.limits = RequestLimits.of(path, body if isinstance(body, dict) else {})
        self.progress = Progress()
        self.rewriter = ChunkRewriter(self.chat, body.get("model"), self.progress)
        self.holdback = StopHoldback(self.limits.stops, self.limits.include_stop)

        self._pending: tuple[dict[str, Any], bytes] | None = None  # see _dispatch
        # Plain chunks relayed unchanged and not parsed yet (see feed); None once
        # every chunk needs parsing (stop strings, or after a seam).
        self._backlog: list[bytes] | None = None if self.limits.stops else []
        self._finish_passed = False  # the finish chunk went out unparsed (in the backlog)
        self.resumes = 0  # continuation requests made
        self.probes = 0  # one-token requests made only to learn the prompt's token count
        self._text: list[str] = []  # all text generated upstream, across attempts
        self._role_sent = False
        self.finished = False  # a chunk with finish_reason reached the client
        self.usage_sent = False
        self.done = False  # data: [DONE] reached the client
        self.release: str | None = None  # resumer wants the current upstream closed
        self._seam_at: float | None = None
        self._attempt_live = False  # current continuation has produced an event
        self.seam_seconds: list[float] = []
        self.outcomes: list[str] = []
        self.observer: ResumeObserver = NullObserver()

    # ------------------------------------------------------------------ state

    @property
    def resumable(self) -> bool:
        return self.disabled is None and self.reason is None

    @property
    def text(self) -> str:
        """All text the upstream attempts generated so far (the continuation context)."""
        self._catch_up()
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

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
        if self.done or self.release:
            return b""
        if self._backlog is not None and self.resumable:
            sent = self._unparsed(event, self._backlog)
            if sent is not None:
                return sent
        self._catch_up()
        out: list[bytes] = []
        self._event(event, out)
        return b"".join(out)

    def _unparsed(self, event: bytes, backlog: list[bytes]) -> bytes | None:
        """Client bytes for ``event`` passed on unchanged and kept for later parsing;
        None when it needs the full path (usage, errors, anything unusual)."""
        if _plain(event):
            backlog.append(event)
            return event
        if is_done(event):
            if not self._finish_passed:
                return None  # the full path decides (a truncated stream)
            self.done = True
            return DONE_EVENT
        if self._finish_passed or not _plain(event, finishing=True):
            return None
        # The chunk that finishes the choice: parsed alone (once per stream) to be sure.
        try:
            choices = json.loads(event[6:-2]).get("choices")
        except (ValueError, AttributeError):
            return None
        if not isinstance(choices, list) or len(choices) != 1:
            return None
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0):
            return None
        if choice.get("finish_reason") in _ABORT_FINISH:
            return None
        self._finish_passed = True
        backlog.append(event)
        return event

    def _catch_up(self) -> None:
        """Parse the plain chunks kept by :meth:`feed` (their bytes already went out)."""
        if self._backlog:
            backlog, self._backlog = self._backlog, []
            sink: list[bytes] = []
            for event in backlog:
                self._event(event, sink)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        payload = event_data(event)
        if payload is None:
            return  # a comment or an event without data: nothing to relay
        if payload in (DONE, _DONE_STR):
            self._flush_pending(out)
            if not (self.done or self.release):
                self._upstream_done(out)
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self.release = "upstream sent a malformed event"
        elif "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            msg = err.get("message") if isinstance(err, dict) else err
            self.release = f"upstream error event: {msg}"
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
        if self.done or self.release:
            return
        if late and _is_piece(obj, self.chat):
            self._pending = (obj, raw)
        else:
            self._chunk(obj, raw, out)

    def _flush_pending(self, out: list[bytes]) -> None:
        if self._pending is not None:
            obj, raw = self._pending
            self._pending = None
            self._chunk(obj, raw, out)

    def _chunk(self, obj: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        self.rewriter.observe(obj)
        if self._seam_at is not None and not self._attempt_live:
            self._attempt_live = True
            if not self.progress.probing:  # a probe is bookkeeping, not a resume
                self.record_outcome("ok")
        usage = obj.get("usage")
        self._account_usage(usage)
        if self.progress.probing:
            return  # a probe's output is never shown
        choices = obj.get("choices")
        if not choices:
            if isinstance(usage, dict):
                if self.finished and self.limits.include_usage and not self.usage_sent:
                    out.append(self.rewriter.usage_chunk(obj))
                    self.usage_sent = True
                # otherwise an intermediate usage chunk: dropped, the final one is rebuilt
                return
            out.append(self.rewriter.rewrite(obj, raw, modified=False))
        elif len(choices) != 1 or not isinstance(choices[0], dict) or choices[0].get("index", 0):
            self.reason = self.reason or "several choices in the stream"
            out.append(self.rewriter.rewrite(obj, raw, modified=False))
        else:
            self._choice(obj, choices[0], raw, usage, out)

    def _account_usage(self, usage: Any) -> None:
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            p = self.progress
            p.last_usage = usage
            if not p.probing:
                p.orig_prompt_tokens = max(0, usage["prompt_tokens"] - p.tokens_before)
            else:
                p.probe_usage = usage

    def _choice(
        self, obj: dict[str, Any], choice: dict[str, Any], raw: bytes, usage: Any, out: list[bytes]
    ) -> None:
        """One chunk of the (single) choice: count, filter for stop strings, rewrite."""
        finish = choice.get("finish_reason")
        if finish in _ABORT_FINISH:
            self.release = f"upstream finish_reason {finish!r}"
            return
        text, dup_role = (
            self._chat_delta(choice) if self.chat else (choice.get("text") or "", False)
        )
        modified = dup_role
        if self.finished:
            # Trailing choices chunks after the finish: pass along, never count.
            out.append(self.rewriter.rewrite(obj, raw, modified))
            return
        if text:
            self._count(text, usage)
        check = self.resumable and self.total_tokens >= self.limits.min_tokens
        shown, stop_hit = self._filter(text, bool(finish), check)
        if stop_hit is not None:
            finish = "stop"
            if "stop_reason" in choice:
                choice["stop_reason"] = stop_hit
            choice["finish_reason"] = "stop"
            modified = True
        if shown != text:
            self._set_text(choice, shown)
            modified = True
        if finish:
            self.finished = True
        elif not shown and (text or (dup_role and not _has_payload(choice["delta"]))):
            return  # all held back, or only a duplicate role chunk: nothing to show
        self.rewriter.template = obj
        out.append(self.rewriter.rewrite(obj, raw, modified))
        if stop_hit is not None:
            self._stopped_at_seam(out)

    def _chat_delta(self, choice: dict[str, Any]) -> tuple[str, bool]:
        """A chat chunk's text, and whether it was a second role chunk (dropped)."""
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        if delta.get("tool_calls") or delta.get("function_call"):
            self.reason = self.reason or "tool call in flight"
        if delta.get("reasoning_content") or delta.get("reasoning"):
            self.reason = self.reason or "reasoning in flight"
        dup_role = False
        if "role" in delta:
            if self._role_sent:
                choice["delta"] = {k: v for k, v in delta.items() if k != "role"}
                dup_role = True
            else:
                self._role_sent = True
        return delta.get("content") or "", dup_role

    def _count(self, text: str, usage: Any) -> None:
        p = self.progress
        self._text.append(text)
        p.attempt_tokens += 1
        if (
            isinstance(usage, dict)
            and isinstance(usage.get("completion_tokens"), int)
            and not self.limits.stops
        ):
            # Continuous usage stats: exact, unless the engine holds tokens back for stop
            # strings (their text is not in the stream yet): then count chunks.
            p.attempt_tokens = usage["completion_tokens"]
        if self._seam_at is not None:
            self.seam_seconds.append(self._clock() - self._seam_at)
            self.observer.seam(self.seam_seconds[-1])
            self._seam_at = None

    def _filter(self, text: str, finishing: bool, check: bool) -> tuple[str, str | None]:
        if not self.holdback.stops or not self.resumable:
            # No stop strings, or resume became impossible mid-stream: hold nothing back.
            return self.holdback.take_held() + text, None
        return self.holdback.filter(text, finishing=finishing, check=check)

    def _stopped_at_seam(self, out: list[bytes]) -> None:
        """The router found a stop string across a seam: end the client stream here."""
        if self.limits.include_usage and self.progress.orig_prompt_tokens is None:
            self.release = SEAM_STOP  # a one-token probe must measure the prompt first
            return
        if self.limits.include_usage:
            # Continuous usage stats already told us the prompt size.
            out.append(self.rewriter.usage_chunk(None))
            self.usage_sent = True
        self._finish(out)

    def _set_text(self, choice: dict[str, Any], text: str) -> None:
        if self.chat:
            delta = dict(choice.get("delta") or {})
            if text or "content" in delta:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text

    def _upstream_done(self, out: list[bytes]) -> None:
        """The current upstream sent ``data: [DONE]``."""
        p = self.progress
        if p.probing:
            usage = p.probe_usage
            if usage is None:
                log.warning(
                    "resume probe returned no usage; final usage omitted",
                    extra={"request_id": self.request_id},
                )
            else:
                p.orig_prompt_tokens = max(0, usage["prompt_tokens"] - self.total_tokens)
                out.append(self.rewriter.usage_chunk(None))
                self.usage_sent = True
            self._finish(out)
            return
        if not self.finished:
            # [DONE] before a finish_reason: the engine cut the answer short (llama.cpp
            # does when another request arrives). Never pass that on as complete.
            self.release = TRUNCATED
            return
        if self.limits.include_usage and not self.usage_sent and p.last_usage is not None:
            out.append(self.rewriter.usage_chunk(None))
            self.usage_sent = True
        self._finish(out)

    def _finish(self, out: list[bytes]) -> None:
        out.append(DONE_EVENT)
        self.done = True
        self.release = None

    # ------------------------------------------------------------------ after a break

    def after_break(self, why: str) -> tuple[bytes, dict[str, Any] | None]:
        """The current upstream is gone (or released): the bytes to send, then the
        continuation body to open (None: the stream ends with those bytes)."""
        if self.done:
            return b"", None
        self._catch_up()
        self._backlog = None  # from the first seam on, every chunk may need rewriting
        p = self.progress
        p.tokens_before += p.attempt_tokens
        p.attempt_tokens = 0
        p.last_usage = None
        self._pending = None  # never shown, never counted: the continuation regenerates it
        self.release = None
        if self._seam_at is not None and not self._attempt_live and not p.probing:
            self.record_outcome("failed")
        if self.finished:
            # The content is complete; only usage (and [DONE]) may be missing.
            if not self.limits.include_usage or self.usage_sent:
                return self._end(DONE_EVENT)
            if p.orig_prompt_tokens is not None:
                p.probing = False
                return self._end(self.rewriter.usage_chunk(None) + DONE_EVENT)
        refusal = self.disabled or self.reason
        if refusal:
            self.record_outcome("disabled" if self.disabled else "not_resumable")
            return self._end(self.fail(f"upstream stream broke ({why}); not resumed: {refusal}"))
        if self.finished:
            return self._next_attempt(why, probe=True)
        max_tokens = self.limits.max_tokens
        if max_tokens is not None and max_tokens - self.total_tokens <= 0:
            return self._finish_locally(why)
        return self._next_attempt(why, probe=False)

    def _finish_locally(self, why: str) -> tuple[bytes, dict[str, Any] | None]:
        """Nothing is left to generate (``max_tokens`` reached): the router ends the stream."""
        self.record_outcome("ok")
        data = self.rewriter.finish_chunk("length", self.holdback.take_held())
        self.finished = True
        if not self.limits.include_usage:
            return self._end(data + DONE_EVENT)
        if self.progress.orig_prompt_tokens is not None:
            return self._end(data + self.rewriter.usage_chunk(None) + DONE_EVENT)
        more, body = self._next_attempt(why, probe=True)
        return data + more, body

    def _next_attempt(self, why: str, *, probe: bool) -> tuple[bytes, dict[str, Any] | None]:
        # Probes regenerate nothing (one token, discarded), so they have their own budget.
        used = self.probes if probe else self.resumes
        if used >= self.max_resumes:
            self.record_outcome("exhausted")
            what = "usage probe" if probe else "resume"
            message = f"upstream stream broke ({why}); gave up after {used} {what} attempt(s)"
            return self._end(self.fail(message))
        if probe:
            self.probes += 1
        else:
            self.resumes += 1
        p = self.progress
        p.attempt += 1
        p.probing = probe
        p.probe_usage = None
        self._attempt_live = False
        self._seam_at = self._clock()
        self.holdback.seam()
        if not probe:
            self.observer.resumed_tokens(self.total_tokens)
        return b"", self.continuation_body(probe=probe)

    def continuation_body(self, *, probe: bool = False) -> dict[str, Any]:
        """The request that continues the stream from the text generated so far."""
        return continuation_body(self.body, self.limits, self.text, self.total_tokens, probe=probe)

    def fail(self, message: str) -> bytes:
        """End the client stream with the SSE error event; returns its bytes."""
        log.warning(message, extra={"request_id": self.request_id})
        self.done = True
        self._seam_at = None
        return error_and_done(message)

    def _end(self, data: bytes) -> tuple[bytes, None]:
        self.done = True
        self._seam_at = None
        return data, None

    def record_outcome(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.observer.outcome(outcome)


def _plain(event: bytes, *, finishing: bool = False) -> bool:
    """A one-line JSON chunk with no usage, no error and (unless ``finishing``) no
    finished choice: before any seam the resumer passes it on unchanged, so it
    need not be parsed yet."""
    if not event.startswith(b"data: {") or event.find(b"\n") != len(event) - 2:
        return False
    if b'"error"' in event:
        return False
    usage = event.find(b'"usage":')
    if usage >= 0 and not event.startswith((b'"usage":null', b'"usage": null'), usage):
        return False
    return finishing or unfinished(event)


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


def _has_payload(delta: Mapping[str, Any]) -> bool:
    """A chat delta that says something (not just an empty content or a role)."""
    return any(v for k, v in delta.items() if k != "role")
