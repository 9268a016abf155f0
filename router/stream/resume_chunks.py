"""One parsed upstream chunk of a resumed stream, turned into client bytes.

:class:`ChunkProcessor` does the per-chunk work of stream resume: counts the
text and tokens each attempt generated, keeps one assistant role chunk and
one finish chunk, applies the stop-string holdback across seams
(:mod:`.stop_holdback`), has every chunk and usage restated for the client
(:mod:`.chunk_rewrite`) and ends the client stream at the upstream's
``[DONE]``. What it knows about the client stream so far lives in a
:class:`ClientState` it shares with the resumer. I/O-free.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .chunk_rewrite import ChunkRewriter, Progress
from .resume_attempts import Attempts
from .resume_backlog import ABORT_FINISH
from .resume_request import RequestLimits
from .sse import DONE_EVENT
from .stop_holdback import StopHoldback

log = logging.getLogger("spotrelay.router.stream.resume")

#: :attr:`ClientState.release` when the router itself ended the stream at a stop
#: string that began before a seam (the upstream did nothing wrong).
SEAM_STOP = "stop string completed across a seam"

#: :attr:`ClientState.release` when an upstream ended its stream before a
#: finish_reason: the break label ``truncated``.
TRUNCATED = "truncated: the stream ended before a finish_reason"


@dataclass
class ClientState:
    """What the client stream holds so far, shared by the resumer's pieces."""

    request_id: str | None
    disabled: str | None  # resume turned off (config or header), or None
    reason: str | None  # why the request cannot be resumed, or None
    text: list[str] = field(default_factory=list)  # all text generated, across attempts
    role_sent: bool = False
    finished: bool = False  # a chunk with finish_reason reached the client
    usage_sent: bool = False
    done: bool = False  # data: [DONE] reached the client
    failed: bool = False  # the client stream ended with the SSE error event
    release: str | None = None  # the current upstream should be closed, and why

    @property
    def resumable(self) -> bool:
        return self.disabled is None and self.reason is None


@dataclass(eq=False)
class ChunkProcessor:
    """Per-chunk work of stream resume (see the module docstring)."""

    limits: RequestLimits
    state: ClientState
    progress: Progress
    rewriter: ChunkRewriter
    holdback: StopHoldback
    attempts: Attempts

    def chunk(self, obj: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        self.rewriter.observe(obj)
        self.attempts.first_event(self.progress.probing)
        usage = obj.get("usage")
        self._account_usage(usage)
        if self.progress.probing:
            return  # a probe's output is never shown
        choices = obj.get("choices")
        if not choices:
            if isinstance(usage, dict):
                if self.state.finished and self.limits.include_usage and not self.state.usage_sent:
                    out.append(self.rewriter.usage_chunk(obj))
                    self.state.usage_sent = True
                # otherwise an intermediate usage chunk: dropped, the final one is rebuilt
                return
            out.append(self.rewriter.rewrite(obj, raw, modified=False))
        elif len(choices) != 1 or not isinstance(choices[0], dict) or choices[0].get("index", 0):
            self.state.reason = self.state.reason or "several choices in the stream"
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
        if finish in ABORT_FINISH:
            self.state.release = f"upstream finish_reason {finish!r}"
            return
        text, dup_role = (
            self._chat_delta(choice) if self.limits.chat else (choice.get("text") or "", False)
        )
        modified = dup_role
        if self.state.finished:
            # Trailing choices chunks after the finish: pass along, never count.
            out.append(self.rewriter.rewrite(obj, raw, modified))
            return
        if text:
            self._count(text, usage)
        check = self.state.resumable and self.progress.total_tokens >= self.limits.min_tokens
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
            self.state.finished = True
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
            self.state.reason = self.state.reason or "tool call in flight"
        if delta.get("reasoning_content") or delta.get("reasoning"):
            self.state.reason = self.state.reason or "reasoning in flight"
        dup_role = False
        if "role" in delta:
            if self.state.role_sent:
                choice["delta"] = {k: v for k, v in delta.items() if k != "role"}
                dup_role = True
            else:
                self.state.role_sent = True
        return delta.get("content") or "", dup_role

    def _count(self, text: str, usage: Any) -> None:
        p = self.progress
        self.state.text.append(text)
        p.attempt_tokens += 1
        if (
            isinstance(usage, dict)
            and isinstance(usage.get("completion_tokens"), int)
            and not self.limits.stops
        ):
            # Continuous usage stats: exact, unless the engine holds tokens back for stop
            # strings (their text is not in the stream yet): then count chunks.
            p.attempt_tokens = usage["completion_tokens"]
        self.attempts.first_content()

    def _filter(self, text: str, finishing: bool, check: bool) -> tuple[str, str | None]:
        if not self.holdback.stops or not self.state.resumable:
            # No stop strings, or resume became impossible mid-stream: hold nothing back.
            return self.holdback.take_held() + text, None
        return self.holdback.filter(text, finishing=finishing, check=check)

    def _stopped_at_seam(self, out: list[bytes]) -> None:
        """The router found a stop string across a seam: end the client stream here."""
        if self.limits.include_usage and self.progress.orig_prompt_tokens is None:
            self.state.release = SEAM_STOP  # a one-token probe must measure the prompt first
            return
        if self.limits.include_usage:
            # Continuous usage stats already told us the prompt size.
            out.append(self.rewriter.usage_chunk(None))
            self.state.usage_sent = True
        self.finish(out)

    def _set_text(self, choice: dict[str, Any], text: str) -> None:
        if self.limits.chat:
            delta = dict(choice.get("delta") or {})
            if text or "content" in delta:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text

    def upstream_done(self, out: list[bytes]) -> None:
        """The current upstream sent ``data: [DONE]``."""
        p = self.progress
        if p.probing:
            usage = p.probe_usage
            if usage is None:
                log.warning(
                    "resume probe returned no usage; final usage omitted",
                    extra={"request_id": self.state.request_id},
                )
            else:
                p.orig_prompt_tokens = max(0, usage["prompt_tokens"] - self.progress.total_tokens)
                out.append(self.rewriter.usage_chunk(None))
                self.state.usage_sent = True
            self.finish(out)
            return
        if not self.state.finished:
            # [DONE] before a finish_reason: the engine cut the answer short (llama.cpp
            # does when another request arrives). Never pass that on as complete.
            self.state.release = TRUNCATED
            return
        if self.limits.include_usage and not self.state.usage_sent and p.last_usage is not None:
            out.append(self.rewriter.usage_chunk(None))
            self.state.usage_sent = True
        self.finish(out)

    def finish(self, out: list[bytes]) -> None:
        """Send ``[DONE]``: the client stream is complete."""
        out.append(DONE_EVENT)
        self.state.done = True
        self.state.release = None


def _has_payload(delta: Mapping[str, Any]) -> bool:
    """A chat delta that says something (not just an empty content or a role)."""
    return any(v for k, v in delta.items() if k != "role")
