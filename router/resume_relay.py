"""Driving :class:`~spotrelay.router.resume.StreamResumer` over real upstream attempts.

:mod:`spotrelay.router.resume` decides *what* a resumed stream looks like and
does no I/O; this module does the I/O: it pumps upstream bytes through the
resumer, opens continuations on other nodes through the proxy, counts
outcomes in the router's metrics, and plugs all of it into the proxy's stream
seam (:class:`ResumingStreamHandler`, made by :func:`resume_handler_factory`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE
from spotrelay.router.metrics import RouterMetrics
from spotrelay.router.proxy import Answer, ApiError, Proxy, ProxyRequest, StreamStart
from spotrelay.router.resume import (
    SEAM_STOP,
    TRUNCATED,
    ContinuationRejected,
    ResumeObserver,
    StreamResumer,
)
from spotrelay.router.settings import Resume as ResumeSettings
from spotrelay.router.stream import (
    AbandonUpstream,
    ClientStreamComplete,
    EndWithError,
    StreamBreak,
    StreamHandler,
)
from spotrelay.router.upstream import classify

log = logging.getLogger("spotrelay.router.resume")

#: What a node's engine must report to take a chat continuation.
CHAT_RESUME_NEEDS = frozenset({CAP_CONTINUE_FINAL_MESSAGE})


def _close(it: Any) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # closing a broken upstream may fail again; nothing to do
            log.debug("closing upstream failed", exc_info=True)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _pump(resumer: StreamResumer, upstream: Iterable[bytes]) -> Generator[bytes, None, str | None]:
    """Relay one upstream attempt; return None when the client stream is complete,
    else why the attempt ended early. The upstream is always closed on the way out;
    when it failed, its ``on_break(why, exc)`` (if it has one) is told first."""
    exc: BaseException | None = None
    why: str | None = None
    try:
        it = iter(upstream)
        while True:
            try:
                data = next(it)
            except StopIteration:
                # A clean end of the body; before a finish_reason it is a truncation.
                why = "upstream closed the stream without [DONE]" if resumer.finished else TRUNCATED
                break
            except Exception as err:  # any read failure is a break, whatever the client
                exc, why = err, _describe(err)
                break
            out = resumer.feed(data)
            if out:
                yield out
            if resumer.done:
                return None
            if resumer.release:
                why = resumer.release
                break
        if why != SEAM_STOP:
            on_break = getattr(upstream, "on_break", None)
            if on_break is not None:
                on_break(why, exc)
        return why
    finally:
        _close(upstream)


def resume_after_break(
    resumer: StreamResumer,
    why: str,
    open_attempt: Callable[[dict[str, Any]], Iterable[bytes]],
) -> Iterator[bytes]:
    """The rest of the client stream after an upstream broke for reason ``why``.

    ``open_attempt(body)`` must send ``body`` to a node other than the ones that
    failed and return its SSE body as an iterable of bytes (with ``close()`` to
    abort it); it raises when no node would take it (:class:`ContinuationRejected`
    when retrying elsewhere is pointless).
    """
    while True:
        step = resumer.after_break(why)
        if step.data:
            yield step.data
        if step.body is None:
            return
        try:
            upstream = open_attempt(step.body)
        except ContinuationRejected as exc:
            resumer._record_outcome(exc.outcome)
            yield resumer._fail(f"continuation refused: {exc}").data
            return
        except Exception as exc:
            why = f"continuation could not start: {_describe(exc)}"
            continue
        result = yield from _pump(resumer, upstream)
        if result is None:
            return
        why = result


def relay(
    resumer: StreamResumer,
    first: Iterable[bytes],
    open_attempt: Callable[[dict[str, Any]], Iterable[bytes]],
    observer: ResumeObserver | None = None,
) -> Iterator[bytes]:
    """Client bytes for a stream whose first upstream attempt is ``first``.

    Any exception while reading an upstream counts as a break; a client
    disconnect (``GeneratorExit``) closes the current upstream.
    """
    if observer is not None:
        resumer.observer = observer
    why = yield from _pump(resumer, first)
    if why is not None:
        yield from resume_after_break(resumer, why, open_attempt)


# ---------------------------------------------------------------------------
# The router's seam: a StreamHandler for Proxy.stream_handler_factory (router/stream.py)


class MetricsObserver:
    """Feeds resume events into the router's Prometheus metrics."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self._metrics = metrics

    def outcome(self, outcome: str) -> None:
        self._metrics.resumes.labels(outcome).inc()

    def resumed_tokens(self, tokens: int) -> None:
        self._metrics.resumed_tokens.inc(tokens)

    def seam(self, seconds: float) -> None:
        self._metrics.resume_seam.observe(seconds)


def _break_label(why: str, exc: BaseException | None) -> str:
    """The ``stream_breaks_total{reason}`` label, as the proxy's relay names them."""
    if exc is not None:
        kind, _ = classify(exc)
        return "idle_timeout" if kind.value.endswith("timeout") else "reset"
    if why.startswith("upstream error event"):
        return "error_event"
    if why.startswith("upstream closed"):
        return "eof"
    if why.startswith("truncated"):
        return "truncated"
    return "invalid"


class _Continuation:
    """A continuation's upstream as closable event bytes; a break counts against its node."""

    def __init__(self, start: StreamStart, proxy: Proxy, req: ProxyRequest) -> None:
        self._start = start
        self._proxy = proxy
        self._req = req

    def __iter__(self) -> Iterator[bytes]:
        yield from self._start.first_batch
        for batch in self._start.batches:
            yield from batch

    def on_break(self, why: str, exc: BaseException | None) -> None:
        upstream = self._start.upstream
        node = upstream.node
        label = "idle_timeout" if upstream.idle_timed_out else _break_label(why, exc)
        self._proxy.metrics.stream_breaks.labels(label).inc()
        self._proxy.registry.record_failure(node)
        log.warning(
            "resumed stream broke on node %s: %s",
            node.id,
            why,
            extra={"request_id": self._req.request_id},
        )

    def close(self) -> None:
        upstream = self._start.upstream
        upstream.close(abort=not upstream.done)


def _answer_message(answer: Answer) -> str:
    try:
        err = json.loads(answer.body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"{answer.status}: {err['message']}"
    except (ValueError, AttributeError):
        pass
    return str(answer.status)


class ResumingStreamHandler:
    """Relays a resumable stream through a :class:`StreamResumer`; resumes on a break.

    The first upstream is relayed by the proxy's :class:`StreamRelay`, which
    calls :meth:`on_event` and, on a break, :meth:`on_broken`; continuations are
    relayed here (:func:`resume_after_break`).
    """

    def __init__(self, req: ProxyRequest, proxy: Proxy, resumer: StreamResumer) -> None:
        self.req = req
        self.proxy = proxy
        self.resumer = resumer

    def on_event(self, event: bytes) -> bytes | None:
        out = self.resumer.feed(event)
        release = self.resumer.release
        if release:
            # An aborted generation, a malformed event, [DONE] without a finish:
            # drop this upstream; the relay then treats it as a break.
            raise AbandonUpstream(release, out)
        if self.resumer.done and not event.startswith(b"data: [DONE]"):
            raise ClientStreamComplete(out)
        return out or None

    def on_broken(self, brk: StreamBreak) -> Iterator[bytes]:
        why = f"{brk.reason}: {brk.detail}" if brk.detail else str(brk.reason)
        return resume_after_break(self.resumer, why, self._open)

    def _open(self, body: dict[str, Any]) -> Iterable[bytes]:
        """Send the continuation to a node this request has not tried yet.

        A chat continuation goes only to a node whose engine reports
        ``continue_final_message``: an engine that ignores it restarts the answer
        mid-sentence. When no registered node can, the stream is not resumable.
        """
        requires = CHAT_RESUME_NEEDS if self.resumer.chat else frozenset()
        if requires and not self._capable_node_exists(requires):
            raise ContinuationRejected(
                f"no node serving model {self.req.model!r} reports"
                f" {', '.join(sorted(requires))} (needed to continue a chat answer)",
                outcome="not_resumable",
            )
        sub = self.req.derive(body, requires=requires)
        result = self.proxy.acquire(sub)
        self.req.tried |= sub.tried
        if isinstance(result, StreamStart):
            node = result.upstream.node.id
            log.info(
                "resuming stream on node %s after %d tokens",
                node,
                self.resumer.total_tokens,
                extra={"request_id": self.req.request_id, "attempt": self.resumer.attempt},
            )
            return _Continuation(result, self.proxy, self.req)
        if isinstance(result, ApiError):
            if result.code in ("no_capacity", "deadline_exceeded"):
                # It waited for capacity already, or no time is left: trying again is pointless.
                raise ContinuationRejected(result.message, outcome=result.code)
            raise RuntimeError(f"no node for the continuation: {result.message}")
        if 400 <= result.status < 500 and result.status not in (408, 429):
            raise ContinuationRejected(f"node {result.node_id} answered {_answer_message(result)}")
        raise RuntimeError(f"node {result.node_id} answered {_answer_message(result)}")

    def _capable_node_exists(self, requires: frozenset[str]) -> bool:
        return any(
            self.req.model in node.models and requires <= node.engine.capabilities
            for node in self.proxy.registry.nodes()
        )


class NotResumedHandler(EndWithError):
    """The proxy's default end-with-error, counting why this stream was not resumable."""

    def __init__(self, resumer: StreamResumer) -> None:
        self.resumer = resumer

    def on_broken(self, brk: StreamBreak) -> Iterator[bytes]:
        r = self.resumer
        r._record_outcome("disabled" if r.disabled else "not_resumable")
        log.info(
            "stream not resumed: %s",
            r.disabled or r.reason,
            extra={"request_id": r.request_id},
        )
        return super().on_broken(brk)


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
            resumer.observer = MetricsObserver(metrics)
        if not resumer.resumable:
            return NotResumedHandler(resumer)  # plain pass-through: no per-event cost
        return ResumingStreamHandler(req, proxy, resumer)

    return make
