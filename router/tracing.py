"""Request tracing hooks for the proxy: a no-op by default, OpenTelemetry when configured.

The proxy calls a :class:`RequestTrace` at four points (an attempt starts
and ends, headers go to a node, something happens to the stream, the request
ends). With ``tracing.enabled: false`` every call goes to :data:`NO_TRACE`,
which does nothing, and no OpenTelemetry module is imported (the ``otel``
extra need not be installed). :mod:`spotrelay.router.tracing_otel` is the
real implementation, imported only by :func:`make_tracing`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .settings import Tracing as TracingSettings


class HeaderItems(Protocol):
    """Request headers as pairs: a mapping, or werkzeug's multi-valued ``Headers``."""

    def items(self) -> Iterable[tuple[str, str]]: ...


class AttemptSpan(Protocol):
    def failed(self, reason: str, detail: str) -> None: ...


class RequestTrace:
    """One client request's trace; this base class is the no-op one."""

    trace_id: str | None = None

    def attempt(self, node_id: str, kind: str) -> AbstractContextManager[AttemptSpan]:
        """An attempt on ``node_id``; ``kind``: attempt, retry or resume.

        The no-op's block is one shared object (a generator-based context
        manager would cost every attempt about eight Python calls).
        """
        return _NO_ATTEMPT_BLOCK

    def headers(self) -> dict[str, str]:
        """``traceparent`` (and ``tracestate``) of the running attempt, for the node."""
        return {}

    def event(self, name: str, **attributes: Any) -> None:
        """Something that happened to the request (a stream break, a resume outcome)."""

    def carry(self, tokens: int) -> None:
        """Tokens generated before a break and carried into the next (resume) attempt."""

    def hedged(self) -> RequestTrace:
        """The same trace for a hedge: its attempts are named ``hedge``."""
        return self

    def end(self, status: int, outcome: str) -> None:
        """The request is over (answer sent, stream finished or abandoned)."""


class _NoAttempt:
    def failed(self, reason: str, detail: str) -> None:
        pass


_NO_ATTEMPT = _NoAttempt()
_NO_ATTEMPT_BLOCK: AbstractContextManager[AttemptSpan] = nullcontext(_NO_ATTEMPT)
NO_TRACE = RequestTrace()


class Tracing:
    """Makes each request's trace; this base class makes :data:`NO_TRACE` only."""

    def start(self, headers: HeaderItems, **attributes: Any) -> RequestTrace:
        return NO_TRACE

    def shutdown(self) -> None:
        pass


def make_tracing(cfg: TracingSettings) -> Tracing:
    """The no-op tracing, or OpenTelemetry's when ``tracing.enabled`` (needs the otel extra)."""
    if not cfg.enabled:
        return Tracing()
    from .tracing_otel import OtelTracing  # only here: off means no OpenTelemetry import

    return OtelTracing(cfg)
