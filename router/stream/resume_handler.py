"""The resume strategy plugged into the proxy's stream relay (``Proxy.stream_handler_factory``).

:class:`~spotrelay.router.stream.resume.StreamResumer` decides *what* a resumed
stream looks like and does no I/O; the relay
(:class:`~spotrelay.router.stream.relay.StreamRelay`) does the I/O. This module
joins them: :class:`ResumingStreamHandler` feeds each upstream event to the
resumer and turns its decisions into the relay's vocabulary (bytes to send,
an upstream to abandon, a continuation to open), and
:class:`MetricsObserver` counts resume outcomes in the router's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE

from ..metrics import RouterMetrics
from ..proxy import Proxy, ProxyRequest
from ..settings import Resume as ResumeSettings
from ..tracing import NO_TRACE, RequestTrace
from .relay import (
    AbandonUpstream,
    BreakReason,
    ClientStreamComplete,
    ContinuationRejected,
    EndWithError,
    Step,
    StreamBreak,
    StreamHandler,
    broken_message,
)
from .resume import StreamResumer
from .resume_chunks import SEAM_STOP, TRUNCATED
from .sse import error_and_done, is_done

log = logging.getLogger("spotrelay.router.stream.resume")

#: What a node's engine must report to take a chat continuation: an engine that
#: ignores ``continue_final_message`` restarts the answer mid-sentence.
CHAT_RESUME_NEEDS = frozenset({CAP_CONTINUE_FINAL_MESSAGE})


class MetricsObserver:
    """Feeds resume events into the router's Prometheus metrics."""

    def __init__(self, metrics: RouterMetrics, trace: RequestTrace = NO_TRACE) -> None:
        self._metrics = metrics
        self._trace = trace

    def outcome(self, outcome: str) -> None:
        self._metrics.resumes.labels(outcome).inc()
        self._trace.event("resume", outcome=outcome)

    def resumed_tokens(self, tokens: int) -> None:
        self._metrics.resumed_tokens.inc(tokens)
        self._trace.carry(tokens)

    def seam(self, seconds: float) -> None:
        self._metrics.resume_seam.observe(seconds)


class ResumingStreamHandler:
    """Relays a resumable stream through a :class:`StreamResumer`; resumes on a break."""

    def __init__(self, resumer: StreamResumer) -> None:
        self.resumer = resumer
        self._requires = CHAT_RESUME_NEEDS if resumer.chat else frozenset()

    def on_event(self, event: bytes) -> bytes | None:
        out = self.resumer.feed(event)
        r = self.resumer.state
        if r.release:
            # A stop string completed across a seam (the node did nothing wrong), an
            # aborted generation, a malformed event, [DONE] without a finish: drop
            # this upstream; the relay then handles it as a break.
            reason = BreakReason.TRUNCATED if r.release == TRUNCATED else BreakReason.ABANDONED
            raise AbandonUpstream(r.release, out, reason=reason, node_failed=r.release != SEAM_STOP)
        if r.done and not is_done(event):
            raise ClientStreamComplete(out)
        return out or None

    def on_break(self, brk: StreamBreak) -> Step:
        return self._step(brk.why)

    def hedge_plan(self) -> tuple[dict, frozenset[str]] | None:
        """What a hedge opens beside a stalled upstream (see :mod:`.hedging`)."""
        body = self.resumer.hedge_body()
        return None if body is None else (body, self._requires)

    def on_open_failed(self, exc: Exception) -> Step:
        if isinstance(exc, ContinuationRejected):
            self.resumer.record_outcome(exc.outcome)
            return Step(self.resumer.fail(f"continuation refused: {exc}"), error=True)
        return self._step(f"continuation could not start: {exc}")

    def _step(self, why: str) -> Step:
        data, body = self.resumer.after_break(why)
        if body is not None:
            log.info(
                "resuming stream after %d tokens (attempt %d)",
                self.resumer.total_tokens,
                self.resumer.attempt,
                extra={"request_id": self.resumer.request_id},
            )
        requires = self._requires if body is not None else frozenset()
        return Step(data, body, requires, error=self.resumer.state.failed)


class NotResumedHandler(EndWithError):
    """The proxy's default end-with-error, counting why this stream was not resumable."""

    def __init__(self, resumer: StreamResumer) -> None:
        self.resumer = resumer

    def on_break(self, brk: StreamBreak) -> Step:
        r = self.resumer
        state = r.state
        r.record_outcome("disabled" if state.disabled else "not_resumable")
        why = state.disabled or state.reason
        log.info("stream not resumed: %s", why, extra={"request_id": r.request_id})
        return Step(error_and_done(f"{broken_message(brk)}; not resumed: {why}"), error=True)


def resume_handler_factory(
    cfg: ResumeSettings, metrics: RouterMetrics | None = None
) -> Callable[[ProxyRequest, Proxy], StreamHandler]:
    """``Proxy.stream_handler_factory`` that resumes streams per ``resume.*`` config."""

    def make(req: ProxyRequest, proxy: Proxy) -> StreamHandler:
        resumer = StreamResumer(
            req.path,
            req.doc,
            resume_off=req.resume_off,
            enabled=cfg.enabled,
            max_resumes=cfg.max_attempts,
            request_id=req.request_id,
        )
        if metrics is not None:
            resumer.attempts.observer = MetricsObserver(metrics, req.trace)
        if not resumer.resumable:
            return NotResumedHandler(resumer)  # plain pass-through: no per-event cost
        return ResumingStreamHandler(resumer)

    return make
