"""OpenTelemetry tracing for the router (``pip install 'spotrelay[otel]'``).

One span per client request (``SERVER``; its parent is the client's W3C
``traceparent`` when it sent one), one child span per attempt on a node
(``CLIENT``, named ``attempt``, ``retry`` or ``resume``, with the node id, the
failure reason, and for a resume the tokens carried over), events on the
request span for stream breaks and resume outcomes. The attempt span's
``traceparent`` goes to the engine, so vLLM's own spans
(``--otlp-traces-endpoint``) join the trace. Spans are batched to an OTLP/HTTP
endpoint (``tracing.otlp_endpoint``). Context is passed explicitly, never
through the ambient context, because many requests share a thread under gevent.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .settings import Tracing as TracingSettings
from .tracing import RequestTrace, Tracing

PROPAGATOR = TraceContextTextMapPropagator()


class _Attempt:
    def __init__(self, span: trace.Span) -> None:
        self.span = span

    def failed(self, reason: str, detail: str) -> None:
        self.span.set_attribute("spotrelay.failure", reason)
        self.span.set_status(Status(StatusCode.ERROR, detail[:200]))


class OtelRequestTrace(RequestTrace):
    def __init__(self, owner: OtelTracing, span: trace.Span, request_id: str) -> None:
        self._owner = owner
        self._span = span
        self._request_id = request_id
        self._current: trace.Span | None = None
        self._carried: int | None = None
        self._kind: str | None = None  # "hedge" in the view hedged() returns
        ctx = span.get_span_context()
        self.trace_id = trace.format_trace_id(ctx.trace_id) if ctx.is_valid else None

    @contextmanager
    def attempt(self, node_id: str, kind: str) -> Iterator[_Attempt]:
        parent = trace.set_span_in_context(self._span)
        kind = self._kind or kind
        span = self._owner.tracer.start_span(kind, context=parent, kind=SpanKind.CLIENT)
        span.set_attribute("spotrelay.node", node_id)
        if kind == "resume" and self._carried is not None:
            span.set_attribute("spotrelay.tokens_carried_over", self._carried)
        self._current = span
        try:
            yield _Attempt(span)
        finally:
            self._current = None
            span.end()

    def headers(self) -> dict[str, str]:
        span = self._current or self._span
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def event(self, name: str, **attributes: Any) -> None:
        attrs = {f"spotrelay.{k}": v for k, v in attributes.items() if v is not None}
        self._span.add_event(name, attrs)

    def carry(self, tokens: int) -> None:
        self._carried = tokens

    def hedged(self) -> OtelRequestTrace:
        """A view on the same request span with its own running attempt (a hedge runs
        beside the original stream)."""
        view = copy.copy(self)
        view._current = None
        view._kind = "hedge"
        return view

    def end(self, status: int, outcome: str) -> None:
        self._span.set_attribute("http.response.status_code", status)
        self._span.set_attribute("spotrelay.outcome", outcome)
        if status >= 500:
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()
        self._owner.forget(self._request_id)


class OtelTracing(Tracing):
    """The router's tracer provider; adds ``trace_id`` to log lines of traced requests."""

    def __init__(self, cfg: TracingSettings, processor: SpanProcessor | None = None) -> None:
        resource = Resource.create({"service.name": cfg.service_name})
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio))
        )
        if processor is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otlp_endpoint))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("spotrelay.router")
        self._trace_ids: dict[str, str] = {}  # request id -> trace id, while in progress
        self._lock = threading.Lock()
        _install_log_filter(self)

    def start(self, headers: Mapping[str, str], **attributes: Any) -> RequestTrace:
        parent = PROPAGATOR.extract({k.lower(): v for k, v in headers.items()})
        request_id = str(attributes.get("request_id", ""))
        span = self.tracer.start_span(
            str(attributes.get("path", "request")), context=parent, kind=SpanKind.SERVER
        )
        for key, value in attributes.items():
            if value:
                span.set_attribute(f"spotrelay.{key}", value)
        req_trace = OtelRequestTrace(self, span, request_id)
        if req_trace.trace_id and request_id:
            with self._lock:
                self._trace_ids[request_id] = req_trace.trace_id
        return req_trace

    def trace_id_of(self, request_id: str) -> str | None:
        return self._trace_ids.get(request_id)

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._trace_ids.pop(request_id, None)

    def shutdown(self) -> None:
        self.provider.shutdown()


class _TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to every record that names a traced request's ``request_id``."""

    def __init__(self, tracing: OtelTracing) -> None:
        super().__init__()
        self.tracing = tracing

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = getattr(record, "request_id", None)
        if request_id and not hasattr(record, "trace_id"):
            trace_id = self.tracing.trace_id_of(request_id)
            if trace_id:
                record.trace_id = trace_id
        return True


def _install_log_filter(tracing: OtelTracing) -> None:
    log_filter = _TraceIdFilter(tracing)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
