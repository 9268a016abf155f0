"""OpenTelemetry traces from the router: spans per request and attempt, traceparent in and out.

Node ``a`` is a scripted engine over real HTTP (tests/fake_engine.py) that
records the headers it gets; session affinity steers the first attempt to it.
One test runs the router in this process with the SDK's in-memory exporter;
the other runs it under gunicorn exporting OTLP/HTTP to a receiver in the
test. A third proves the router imports nothing of OpenTelemetry when off.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from spotrelay.router.registry.balancer import rendezvous_weight
from spotrelay.sim.loopback import free_port, wait_until
from spotrelay.sim.processes import ProcessGroup
from tests.support import ROUTER_TOKEN, register_node, start_router
from tests.support.fake_engine import Script, fake_engine
from tests.support.resume_fleet import COMPLETIONS, MODEL, ROUTER_CONFIG, body_for, stream

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
PIECES = ["Once", " upon", " a", " time"]
ROOT = Path(__file__).resolve().parents[1]


def session_for(node_id: str) -> dict[str, str]:
    """Headers whose session key makes ``node_id`` the first choice between a and b."""
    for i in range(10000):
        key = f"s{i}"
        if max(("a", "b"), key=lambda n: rendezvous_weight(key, n)) == node_id:
            return {"X-Session-ID": key}
    raise AssertionError("no session key found")


def _parent_of(traceparent: str) -> tuple[str, str]:
    _version, trace_id, span_id, _flags = traceparent.split("-")
    return trace_id, span_id


@contextmanager
def in_process_router(exporter: Any) -> Iterator[str]:
    """The router's app and service in this process, on a real loopback socket."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from werkzeug.serving import make_server

    from spotrelay.router.app import create_app
    from spotrelay.router.service import RouterService
    from spotrelay.router.tracing_otel import OtelTracing
    from tests.support.router_fakes import fast_config

    cfg = fast_config(**ROUTER_CONFIG, tracing={"enabled": True})
    svc = RouterService(cfg, ROUTER_TOKEN)
    svc.tracing = OtelTracing(cfg.tracing, processor=SimpleSpanProcessor(exporter))
    server = make_server("127.0.0.1", 0, create_app(svc), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    svc.start()
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        svc.stop()


def test_a_resumed_stream_is_one_trace_with_an_attempt_and_a_resume_span() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

    exporter = InMemorySpanExporter()
    with (
        in_process_router(exporter) as url,
        fake_engine(Script(PIECES, finish=None)) as first,  # ends without a finish: truncated
        fake_engine(Script([" there", " was"], finish="length")) as second,
    ):
        register_node(url, ROUTER_TOKEN, "a", first.url, MODEL)
        register_node(url, ROUTER_TOKEN, "b", second.url, MODEL)
        headers = {**session_for("a"), "traceparent": TRACEPARENT}
        got = stream(url, COMPLETIONS, body_for(COMPLETIONS, usage=False), headers)
        assert got.text == "Once upon a time there was" and not got.errors
        wait_until(lambda: len(exporter.get_finished_spans()) >= 3, timeout=5, what="3 spans")

    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans[COMPLETIONS]
    assert request.kind is SpanKind.SERVER
    assert format_trace_id(request.context.trace_id) == TRACE_ID  # the client's trace
    assert format_span_id(request.parent.span_id) == CLIENT_SPAN
    assert request.attributes["spotrelay.model"] == MODEL
    assert request.attributes["http.response.status_code"] == 200
    attempt, resume = spans["attempt"], spans["resume"]
    for child, node in ((attempt, "a"), (resume, "b")):
        assert child.kind is SpanKind.CLIENT and child.parent.span_id == request.context.span_id
        assert child.attributes["spotrelay.node"] == node
    assert resume.attributes["spotrelay.tokens_carried_over"] == len(PIECES)
    events = {e.name: dict(e.attributes) for e in request.events}
    assert events["stream_break"]["spotrelay.reason"] == "truncated"
    assert events["stream_break"]["spotrelay.node"] == "a"
    assert events["resume"]["spotrelay.outcome"] == "ok"
    # Each engine got the traceparent of the span that called it.
    for engine, span in ((first, attempt), (second, resume)):
        trace_id, parent = _parent_of(engine.headers[0]["traceparent"])
        assert trace_id == TRACE_ID and parent == format_span_id(span.context.span_id)


class OtlpReceiver:
    """A local OTLP/HTTP endpoint: keeps every protobuf export POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.path == "/v1/traces"
                if ok:
                    receiver.bodies.append(body)
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        out = []
        for body in list(self.bodies):
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            for resource in req.resource_spans:
                for scope in resource.scope_spans:
                    out.extend(scope.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_gunicorn_router_exports_otlp_and_logs_the_trace_id(
    procs: ProcessGroup, logdir: Path
) -> None:
    receiver = OtlpReceiver()
    try:
        config = {
            **ROUTER_CONFIG,
            "tracing": {"enabled": True, "otlp_endpoint": receiver.url},
        }
        env = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # export within 50 ms, not 5 s
        router = start_router(procs, logdir, config, "--log-format", "json", env=env)
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connect_error, then a retry
        with fake_engine(Script(PIECES, finish="stop")) as engine:
            register_node(router.url, ROUTER_TOKEN, "a", dead, MODEL)
            register_node(router.url, ROUTER_TOKEN, "b", engine.url, MODEL)
            headers = {**session_for("a"), "traceparent": TRACEPARENT, "X-Request-ID": "req-otel-1"}
            got = stream(router.url, COMPLETIONS, body_for(COMPLETIONS, usage=False), headers)
            assert got.text == "".join(PIECES) and got.node == "b"
            wait_until(
                lambda: {"attempt", "retry", COMPLETIONS} <= {s.name for s in receiver.spans()},
                timeout=10,
                what="the request's spans at the OTLP receiver",
            )
    finally:
        receiver.close()
    spans = {s.name: s for s in receiver.spans()}
    assert {s.trace_id.hex() for s in spans.values()} == {TRACE_ID}
    attrs = {name: {a.key: a.value for a in span.attributes} for name, span in spans.items()}
    assert attrs["attempt"]["spotrelay.failure"].string_value == "connect_error"
    assert attrs["attempt"]["spotrelay.node"].string_value == "a"
    assert attrs["retry"]["spotrelay.node"].string_value == "b"
    assert _parent_of(engine.headers[0]["traceparent"]) == (TRACE_ID, spans["retry"].span_id.hex())
    # The router's JSON log lines of this request carry its trace id.
    lines = [
        json.loads(x) for x in (logdir / "router.log").read_text().splitlines() if x[:1] == "{"
    ]
    mine = [x for x in lines if x.get("request_id") == "req-otel-1"]
    assert mine and all(x.get("trace_id") == TRACE_ID for x in mine), mine


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from spotrelay.router.app import create_app\n"
        "from spotrelay.router.service import RouterService\n"
        "from tests.support.router_fakes import fast_config\n"
        "svc = RouterService(fast_config(), 'node-secret')\n"
        "app = create_app(svc)\n"
        "app.test_client().post('/v1/completions', json={'model': 'm', 'prompt': 'x'})\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_hedge_is_a_child_span_named_hedge_beside_the_original_attempt() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from spotrelay.router.settings import Tracing as TracingSettings
    from spotrelay.router.tracing_otel import OtelTracing

    exporter = InMemorySpanExporter()
    tracing = OtelTracing(TracingSettings(enabled=True), processor=SimpleSpanProcessor(exporter))
    req = tracing.start({"traceparent": TRACEPARENT}, request_id="r1", path="/v1/completions")
    with req.attempt("a", "attempt"):
        pass
    hedge = req.hedged()
    with hedge.attempt("b", "resume") as span, req.attempt("c", "resume"):
        span.failed("reset", "the hedge's node went away")
        assert _parent_of(hedge.headers()["traceparent"])[0] == TRACE_ID
    req.event("hedge", outcome="original_won")
    req.end(200, "complete")
    spans = {(s.name, s.attributes["spotrelay.node"]) for s in exporter.get_finished_spans()[:-1]}
    assert spans == {("attempt", "a"), ("hedge", "b"), ("resume", "c")}
    request = exporter.get_finished_spans()[-1]
    assert [e.name for e in request.events] == ["hedge"]
    tracing.shutdown()
