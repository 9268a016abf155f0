"""Resume a streaming completion on another node after its upstream broke.

Once the first bytes of an SSE stream have reached the client, a retry is no
longer invisible: the client already holds part of the answer. vLLM keeps no
state we could move, so the stream is continued instead: the text streamed so
far is handed to a healthy node as context (completions: appended to the
prompt; chat: a partial assistant message with ``continue_final_message``), and
the new node's output is stitched onto the same client stream.

:class:`StreamResumer` is a plain, I/O-free state machine for one streaming
request: the proxy feeds it upstream bytes and forwards what it returns. It

* decides whether the request can be resumed at all (:func:`not_resumable`);
* tracks the text and tokens streamed so far;
* rewrites every chunk so the client sees one stream: the first upstream's
  ``id``, ``created``, ``model`` and ``system_fingerprint``, one assistant role
  chunk, one finish chunk, one final ``usage`` (when asked) summed across
  attempts;
* holds back the few trailing characters that could begin a ``stop`` string, so
  a stop string that straddles a seam still stops the stream exactly where the
  engine would have stopped it;
* after a break, returns the continuation body (or the bytes that end the
  stream cleanly: the OpenAI-shaped SSE error event, then ``data: [DONE]``).

All I/O lives in :mod:`spotrelay.router.resume_relay`, whose ``relay`` drives
the resumer over real upstream attempts: the proxy supplies the first upstream
body iterator and a callable that opens a continuation on another node.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from spotrelay.router.sse import DONE, DONE_EVENT, encode_json, error_and_done, event_data

DONE_STR = DONE.decode()

log = logging.getLogger("spotrelay.router.resume")

#: Request header that turns resume off for one request (``off``, ``false``, ``0``, ``no``).
RESUME_HEADER = "X-Spotrelay-Resume"
_OFF_VALUES = frozenset({"off", "false", "0", "no", "disable", "disabled"})

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

#: vLLM's (and OpenAI's) ``max_tokens`` default for ``/v1/completions``.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

#: :attr:`StreamResumer.release` when the router itself ended the stream at a stop
#: string that began before a seam (the upstream did nothing wrong).
SEAM_STOP = "stop string completed across a seam"

#: :attr:`StreamResumer.release` (and the start of a break's ``why``) when an upstream
#: ended its stream before a finish_reason: the break label ``truncated``.
TRUNCATED = "truncated: the stream ended before a finish_reason"

#: finish reasons that mean "the engine gave up on this request", not a real end.
_ABORT_FINISH = frozenset({"abort", "error"})

# Request fields whose semantics a continuation cannot preserve.
_GUIDED_KEYS = (
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
)


def resume_off(value: str | None) -> bool:
    """True when the :data:`RESUME_HEADER` value asks for no resume (the web layer parses it)."""
    return value is not None and value.strip().lower() in _OFF_VALUES


def not_resumable(path: str, body: Any) -> str | None:
    """Why this streaming request cannot be continued elsewhere, or None if it can."""
    if path not in (COMPLETIONS, CHAT):
        return f"{path} streams are not resumable"
    if not isinstance(body, dict):
        return "request body is not a JSON object"
    if (body.get("n") or 1) != 1:
        return "n > 1"
    if (body.get("best_of") or 1) != 1:
        return "best_of > 1"
    if body.get("use_beam_search"):
        return "beam search"
    if body.get("echo"):
        return "echo"
    if body.get("prompt_logprobs") is not None:
        return "prompt_logprobs"
    if path == COMPLETIONS:
        if body.get("logprobs") is not None:
            return "logprobs"
        if body.get("suffix"):
            return "suffix"
        prompt = body.get("prompt")
        if not (
            isinstance(prompt, str)
            or (isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str))
        ):
            return "prompt is not a single string (token ids or several prompts)"
    else:
        if body.get("logprobs") or body.get("top_logprobs"):
            return "logprobs"
        if body.get("tools") and body.get("tool_choice", "auto") != "none":
            return "tools"
        if body.get("functions") or body.get("function_call") not in (None, "none"):
            return "function calling"
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return "messages is not a list of objects"
        if body.get("continue_final_message"):
            last = messages[-1] if messages else {}
            if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
                return "continue_final_message without a final string assistant message"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return "response_format (guided decoding restarts at a seam)"
    for key in _GUIDED_KEYS:
        if body.get(key) is not None:
            return key
    return None


def _stop_strings(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return ()
    return tuple(s for s in stop if isinstance(s, str) and s)


class ResumeObserver(Protocol):
    """Where ``resume_relay.relay`` reports what happened (the router's metrics)."""

    def outcome(self, outcome: str) -> None:
        """One resume decision: ok, failed, exhausted, not_resumable or disabled."""

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

    Usage: feed every upstream byte chunk to :meth:`feed` and forward the result.
    Stop reading when :attr:`done` (the client got ``[DONE]``) or when
    :attr:`release` is set (the resumer wants this upstream closed). On any
    upstream failure, or after ``release``, call :meth:`after_break`; send its
    ``data`` to the client, then open its ``body`` (if any) on another node and
    keep feeding. :func:`~spotrelay.router.resume_relay.relay` does exactly this.
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
        self.path = path
        self.chat = path == CHAT
        self.body = body
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

        opts = body.get("stream_options") if isinstance(body, dict) else None
        opts = opts if isinstance(opts, dict) else {}
        self.include_usage = bool(opts.get("include_usage"))
        self.stops = _stop_strings(body) if isinstance(body, dict) else ()
        self.include_stop = bool(body.get("include_stop_str_in_output"))
        self._maxstop = max((len(s) for s in self.stops), default=0)
        min_tokens = body.get("min_tokens")
        self.min_tokens = min_tokens if isinstance(min_tokens, int) else 0
        self.max_tokens = self._original_max_tokens()

        # Client-visible identity (from the first upstream chunk).
        self._meta: dict[str, Any] | None = None
        self._template: dict[str, Any] | None = None  # last choices chunk, to synthesise chunks
        # Progress.
        self._pending: tuple[dict[str, Any], bytes] | None = None  # see _dispatch
        self.attempt = 0  # index of the current upstream attempt (0 = original request)
        self.resumes = 0  # continuation requests made
        self.probes = 0  # one-token requests made only to learn the prompt's token count
        self._text: list[str] = []  # all text generated upstream, across attempts
        self.tokens_before = 0  # tokens counted in earlier attempts
        self.attempt_tokens = 0  # tokens counted in the current attempt
        self._held = ""  # generated but not yet sent: might begin a stop string
        self._tail = ""  # last sent characters (include_stop_str_in_output only)
        self._carry = 0  # chars of _held/_tail that came from earlier attempts
        self._role_sent = False
        self.finished = False  # a chunk with finish_reason reached the client
        self.finish_reason: str | None = None
        self.usage_sent = False
        self.done = False  # data: [DONE] reached the client
        self.release: str | None = None  # resumer wants the current upstream closed
        self._probing = False  # current attempt only measures prompt tokens
        self._probe_usage: dict[str, Any] | None = None
        self._last_usage: dict[str, Any] | None = None  # upstream usage seen this attempt
        self.orig_prompt_tokens: int | None = None
        self._seam_at: float | None = None
        self._attempt_live = False  # current continuation has produced an event
        self.seam_seconds: list[float] = []
        self.outcomes: list[str] = []
        self.observer: ResumeObserver = NullObserver()

    # ------------------------------------------------------------------ properties

    @property
    def resumable(self) -> bool:
        return self.disabled is None and self.reason is None

    @property
    def text(self) -> str:
        """All text the upstream attempts generated so far (the continuation context)."""
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

    @property
    def total_tokens(self) -> int:
        return self.tokens_before + self.attempt_tokens

    def _original_max_tokens(self) -> int | None:
        body = self.body if isinstance(self.body, dict) else {}
        if self.chat:
            for key in ("max_completion_tokens", "max_tokens"):
                if isinstance(body.get(key), int):
                    return body[key]
            return None
        value = body.get("max_tokens", COMPLETIONS_DEFAULT_MAX_TOKENS)
        return value if isinstance(value, int) else None

    # ------------------------------------------------------------------ feeding

    def feed(self, event: bytes) -> bytes:
        """Consume one framed upstream event of the current attempt; return the client bytes."""
        if self.done or self.release:
            return b""
        payload = event_data(event)
        if payload is None:
            return b""  # a comment or an event without data: nothing to relay
        out: list[bytes] = []
        self._event(payload, event, out)
        return b"".join(out)

    def _event(self, payload: bytes | str, raw: bytes, out: list[bytes]) -> None:
        """One upstream event; ``raw`` is its wire form, sent as is when nothing changes."""
        if payload in (DONE, DONE_STR):
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
            return
        if "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            msg = err.get("message") if isinstance(err, dict) else err
            self.release = f"upstream error event: {msg}"
            return
        self._dispatch(obj, raw, out)

    def _dispatch(self, obj: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        """Process ``obj``, one content chunk late when stop strings are in play.

        An engine that stops on a stop string may cut its last token short and
        say so only in the next event (the finish chunk). If the stream broke in
        between, a continuation from that cut text would go astray. So while
        stop strings are active, a content chunk is committed only once the
        engine has sent something after it; at a break, the uncommitted chunk is
        dropped and simply generated again by the continuation.
        """
        if self.stops and self.resumable and not self._probing and _is_piece(obj, self.chat):
            self._flush_pending(out)
            if not (self.done or self.release):
                self._pending = (obj, raw)
            return
        self._flush_pending(out)
        if not (self.done or self.release):
            self._chunk(obj, raw, out)

    def _flush_pending(self, out: list[bytes]) -> None:
        if self._pending is not None:
            obj, raw = self._pending
            self._pending = None
            self._chunk(obj, raw, out)

    def _chunk(self, obj: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        if self._meta is None:
            self._meta = {k: obj[k] for k in ("id", "created", "model") if k in obj}
            if "system_fingerprint" in obj:
                self._meta["system_fingerprint"] = obj["system_fingerprint"]
        if self._seam_at is not None and not self._attempt_live:
            self._attempt_live = True
            if not self._probing:  # a probe is bookkeeping, not a resume
                self.record_outcome("ok")
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self._last_usage = usage
            if not self._probing:
                self.orig_prompt_tokens = max(0, usage["prompt_tokens"] - self.tokens_before)
            else:
                self._probe_usage = usage
        if self._probing:
            return  # a probe's output is never shown
        choices = obj.get("choices")
        if not choices:
            if isinstance(usage, dict):
                if self.finished and self.include_usage and not self.usage_sent:
                    out.append(self._usage_chunk(obj))
                    self.usage_sent = True
                # otherwise an intermediate usage chunk: dropped, the final one is rebuilt
                return
            out.append(self._rewrite(obj, raw, modified=False))
            return
        if len(choices) != 1 or not isinstance(choices[0], dict) or choices[0].get("index", 0):
            self.reason = self.reason or "several choices in the stream"
            out.append(self._rewrite(obj, raw, modified=False))
            return
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish in _ABORT_FINISH:
            self.release = f"upstream finish_reason {finish!r}"
            return
        modified = False
        dup_role = False
        if self.chat:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = {}
            if delta.get("tool_calls") or delta.get("function_call"):
                self.reason = self.reason or "tool call in flight"
            if delta.get("reasoning_content") or delta.get("reasoning"):
                self.reason = self.reason or "reasoning in flight"
            text = delta.get("content") or ""
            if "role" in delta:
                if self._role_sent:
                    delta = {k: v for k, v in delta.items() if k != "role"}
                    choice["delta"] = delta
                    modified = dup_role = True
                else:
                    self._role_sent = True
        else:
            text = choice.get("text") or ""
        if self.finished:
            # Trailing choices chunks after the finish: pass along, never count.
            out.append(self._rewrite(obj, raw, modified))
            return
        if text:
            self._text.append(text)
            self.attempt_tokens += 1
        if (
            text
            and isinstance(usage, dict)
            and isinstance(usage.get("completion_tokens"), int)
            and not self.stops
        ):
            # Continuous usage stats: exact, unless the engine holds tokens back for stop
            # strings (their text is not in the stream yet): then count chunks.
            self.attempt_tokens = usage["completion_tokens"]
        if text and self._seam_at is not None:
            self.seam_seconds.append(self._clock() - self._seam_at)
            self.observer.seam(self.seam_seconds[-1])
            self._seam_at = None

        shown, stop_hit = self._filter_text(text, bool(finish))
        if stop_hit is not None:
            finish = "stop"
            if "stop_reason" in choice:
                choice["stop_reason"] = stop_hit
            choice["finish_reason"] = "stop"
            modified = True
            self.release = SEAM_STOP
        if shown != text:
            self._set_text(choice, shown)
            modified = True
        if finish:
            self.finished = True
            self.finish_reason = finish
        elif not shown and (text or (dup_role and not _has_payload(choice["delta"]))):
            return  # all held back, or only a duplicate role chunk: nothing to show
        self._template = obj
        out.append(self._rewrite(obj, raw, modified))
        if stop_hit is not None and self.include_usage and self.orig_prompt_tokens is not None:
            # Continuous usage stats already told us the prompt size.
            out.append(self._usage_chunk(None))
            self.usage_sent = True
            out.append(DONE_EVENT)
            self.done = True
            self.release = None
        elif stop_hit is not None and not self.include_usage:
            out.append(DONE_EVENT)
            self.done = True
            self.release = None

    def _set_text(self, choice: dict[str, Any], text: str) -> None:
        if self.chat:
            delta = dict(choice.get("delta") or {})
            if text or "content" in delta:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text

    def _filter_text(self, text: str, finishing: bool) -> tuple[str, str | None]:
        """The part of ``text`` to show now, and the stop string hit across a seam (if any).

        Only stop strings that *begin* in text from an earlier attempt are ours to
        find: the engine of the current attempt cannot see them. Everything else is
        the engine's business, so in the common case this changes nothing.
        """
        if not self.stops or not self.resumable:
            if self._held:  # resume became impossible mid-stream: stop holding back
                text, self._held = self._held + text, ""
            return text, None
        check = self._carry > 0 and self.total_tokens >= self.min_tokens
        if self.include_stop:
            window = self._tail + text
            if check:
                hit = self._find_stop(window, self._carry, len(self._tail))
                if hit is not None:
                    end, stop = hit
                    shown = window[len(self._tail) : end]
                    self._remember_tail(shown)
                    return shown, stop
            self._remember_tail(text)
            return text, None
        pending = self._held + text
        if check:
            hit = self._find_stop(pending, self._carry, 0)
            if hit is not None:
                end, stop = hit
                self._held = ""
                self._carry = 0
                return pending[: end - len(stop)], stop
        if finishing:
            self._held = ""
            self._carry = 0
            return pending, None
        keep = self._stop_prefix_len(pending)
        cut = len(pending) - keep
        self._held = pending[cut:]
        self._carry = max(0, self._carry - cut)
        return pending[:cut], None

    def _remember_tail(self, shown: str) -> None:
        tail = self._tail + shown
        cut = max(0, len(tail) - (self._maxstop - 1))
        self._tail = tail[cut:]
        self._carry = max(0, self._carry - cut)

    def _find_stop(self, window: str, carry: int, min_end: int) -> tuple[int, str] | None:
        """Earliest-completing stop string in ``window`` that starts before ``carry``."""
        best: tuple[int, str] | None = None
        for stop in self.stops:
            start = window.find(stop)
            while start != -1 and start < carry:
                end = start + len(stop)
                if end > min_end:
                    if best is None or end < best[0]:
                        best = (end, stop)
                    break
                start = window.find(stop, start + 1)
        return best

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for n in range(min(len(text), self._maxstop - 1), 0, -1):
            suffix = text[-n:]
            if any(len(s) > n and s.startswith(suffix) for s in self.stops):
                return n
        return 0

    def _upstream_done(self, out: list[bytes]) -> None:
        """The current upstream sent ``data: [DONE]``."""
        if self._probing:
            usage = self._probe_usage
            if usage is None:
                log.warning(
                    "resume probe returned no usage; final usage omitted",
                    extra={"request_id": self.request_id},
                )
            else:
                self.orig_prompt_tokens = max(0, usage["prompt_tokens"] - self.total_tokens)
                out.append(self._usage_chunk(None))
                self.usage_sent = True
            self._finish(out)
            return
        if not self.finished:
            # [DONE] before a finish_reason: the engine cut the answer short (llama.cpp
            # does when another request arrives). Never pass that on as complete.
            self.release = TRUNCATED
            return
        if self.include_usage and not self.usage_sent and self._last_usage is not None:
            out.append(self._usage_chunk(None))
            self.usage_sent = True
        self._finish(out)

    def _finish(self, out: list[bytes]) -> None:
        out.append(DONE_EVENT)
        self.done = True
        self.release = None

    # ------------------------------------------------------------------ rewriting

    def _rewrite(self, obj: dict[str, Any], raw: bytes, modified: bool) -> bytes:
        """The client bytes for ``obj``: its original bytes when nothing had to change."""
        if self.attempt > 0 and self._meta is not None:
            for key in ("id", "created", "model"):
                if key in self._meta and obj.get(key) != self._meta[key]:
                    obj[key] = self._meta[key]
                    modified = True
            if "system_fingerprint" in self._meta:
                if obj.get("system_fingerprint") != self._meta["system_fingerprint"]:
                    obj["system_fingerprint"] = self._meta["system_fingerprint"]
                    modified = True
            elif "system_fingerprint" in obj:
                del obj["system_fingerprint"]
                modified = True
        if self.attempt > 0 and isinstance(obj.get("usage"), dict):
            obj["usage"] = self._fixed_usage(obj["usage"])
            modified = True
        return encode_json(obj) if modified else raw

    def _fixed_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """``usage`` of the current attempt restated for the whole client stream.

        prompt_tokens  = original prompt tokens
                       = (a continuation's prompt tokens) - (tokens generated before it)
        completion_tokens = all completion tokens across attempts.
        """
        fixed = dict(usage)
        prompt = self.orig_prompt_tokens
        if prompt is None:
            prompt = max(0, int(usage.get("prompt_tokens", 0)) - self.tokens_before)
        if self._probing or "completion_tokens" not in usage:
            completion = self.total_tokens
        else:
            completion = self.tokens_before + int(usage["completion_tokens"])
        fixed["prompt_tokens"] = prompt
        fixed["completion_tokens"] = completion
        fixed["total_tokens"] = prompt + completion
        return fixed

    def _identity(self) -> dict[str, Any]:
        meta = dict(self._meta or {})
        if "id" not in meta:
            meta["id"] = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        meta.setdefault("created", int(time.time()))
        meta.setdefault("model", self.body.get("model"))
        self._meta = meta
        return {
            "id": meta["id"],
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": meta["created"],
            "model": meta["model"],
            **(
                {"system_fingerprint": meta["system_fingerprint"]}
                if "system_fingerprint" in meta
                else {}
            ),
        }

    def _usage_chunk(self, upstream: dict[str, Any] | None) -> bytes:
        """The one final usage chunk the client sees."""
        obj = self._identity()
        if upstream is not None and upstream.get("object"):
            obj["object"] = upstream["object"]
        obj["choices"] = []
        if self._probing:
            base = self._probe_usage or {}
        else:
            base = (upstream or {}).get("usage") or self._last_usage or {}
        obj["usage"] = self._fixed_usage(base)
        return encode_json(obj)

    def _finish_chunk(self, reason: str | None, text: str) -> bytes:
        """A synthesised last chunk (no upstream produced it)."""
        if self._template is not None:
            obj = copy.deepcopy(self._template)
            for key, value in self._identity().items():
                obj[key] = value
            choice = obj["choices"][0]
        else:
            obj = self._identity()
            choice = {"index": 0, "logprobs": None}
            obj["choices"] = [choice]
        if self.chat:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["text"] = text
        choice["finish_reason"] = reason
        if "stop_reason" in choice:
            choice["stop_reason"] = None
        if isinstance(obj.get("usage"), dict):
            obj["usage"] = None
        if reason is not None:
            self.finished = True
            self.finish_reason = reason
        return encode_json(obj)

    # ------------------------------------------------------------------ after a break

    def after_break(self, why: str) -> tuple[bytes, dict[str, Any] | None]:
        """The current upstream is gone (or released). Decide how the stream goes on."""
        if self.done:
            return b"", None
        self.tokens_before += self.attempt_tokens
        self.attempt_tokens = 0
        self._pending = None  # never shown, never counted: the continuation regenerates it
        self.release = None
        self._last_usage = None
        if self._seam_at is not None and not self._attempt_live and not self._probing:
            self.record_outcome("failed")
        if self.finished:
            # The content is complete; only usage (and [DONE]) may be missing.
            if not self.include_usage or self.usage_sent:
                return self._end(DONE_EVENT)
            if self.orig_prompt_tokens is not None:
                self._probing = False
                return self._end(self._usage_chunk(None) + DONE_EVENT)
        refusal = self.disabled or self.reason
        if refusal:
            self.record_outcome("disabled" if self.disabled else "not_resumable")
            return self._end_with_error(f"upstream stream broke ({why}); not resumed: {refusal}")
        if self.finished:
            return self._next_attempt(why, probe=True)
        remaining = None if self.max_tokens is None else self.max_tokens - self.total_tokens
        if remaining is not None and remaining <= 0:
            self.record_outcome("ok")  # nothing left to generate: finished here
            data = self._finish_chunk("length", self._held)
            self._held = ""
            if not self.include_usage:
                return self._end(data + DONE_EVENT)
            if self.orig_prompt_tokens is not None:
                return self._end(data + self._usage_chunk(None) + DONE_EVENT)
            more, body = self._next_attempt(why, probe=True)
            return data + more, body
        return self._next_attempt(why, probe=False)

    def _next_attempt(self, why: str, *, probe: bool) -> tuple[bytes, dict[str, Any] | None]:
        # Probes regenerate nothing (one token, discarded), so they have their own budget.
        if (self.probes if probe else self.resumes) >= self.max_resumes:
            self.record_outcome("exhausted")
            what = "usage probe" if probe else "resume"
            used = self.probes if probe else self.resumes
            return self._end_with_error(
                f"upstream stream broke ({why}); gave up after {used} {what} attempt(s)"
            )
        if probe:
            self.probes += 1
        else:
            self.resumes += 1
        self.attempt += 1
        self._probing = probe
        self._probe_usage = None
        self._attempt_live = False
        self._seam_at = self._clock()
        self._carry = len(self._tail) if self.include_stop else len(self._held)
        if not probe:
            self.observer.resumed_tokens(self.total_tokens)
        return b"", self.continuation_body(probe=probe)

    def fail(self, message: str) -> bytes:
        """End the client stream with the SSE error event; returns its bytes."""
        log.warning(message, extra={"request_id": self.request_id})
        return self._end(error_and_done(message))[0]

    def _end(self, data: bytes) -> tuple[bytes, None]:
        self.done = True
        self._seam_at = None
        return data, None

    def _end_with_error(self, message: str) -> tuple[bytes, None]:
        return self.fail(message), None

    def record_outcome(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.observer.outcome(outcome)

    def continuation_body(self, *, probe: bool = False) -> dict[str, Any]:
        """The request that continues the stream from the text generated so far.

        A *probe* is the same request cut to one token: it only measures how many
        prompt tokens the original request had, when the stream ended before the
        upstream reported usage.
        """
        body = copy.deepcopy(self.body)
        text = self.text
        done = self.total_tokens
        if self.chat:
            messages = body["messages"]
            if body.get("continue_final_message"):
                last = dict(messages[-1])
                last["content"] = last["content"] + text
                messages[-1] = last
            else:
                messages.append({"role": "assistant", "content": text})
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
            for key in ("max_completion_tokens", "max_tokens"):
                if isinstance(body.get(key), int):
                    body[key] = max(1, body[key] - done)
        else:
            prompt = body["prompt"]
            body["prompt"] = (prompt if isinstance(prompt, str) else prompt[0]) + text
            if self.max_tokens is not None:
                body["max_tokens"] = max(1, self.max_tokens - done)
        if "min_tokens" in body:
            body["min_tokens"] = max(0, self.min_tokens - done)
        body["stream"] = True
        if probe:
            for key in ("max_completion_tokens", "max_tokens"):
                if key in body or key == "max_tokens":
                    body[key] = 1
            body.pop("min_tokens", None)
            body["stream_options"] = {"include_usage": True}
        return body


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
