"""Proxy and stream relay logic against scripted fake nodes (no sockets, fast)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from spotrelay.router.registry.node import NodeStatus
from spotrelay.router.service import RouterService
from spotrelay.router.stream.hedge import StallPolicy, StallWatch
from spotrelay.router.stream.relay import (
    AbandonUpstream,
    BreakReason,
    ClientStreamComplete,
    EndWithError,
    Step,
    StreamBreak,
)
from spotrelay.router.transport.upstream import IdleWatchdog, Upstream
from tests.support.raw_server import RawServer
from tests.support.router_fakes import (
    DONE,
    A,
    B,
    C,
    FakeResp,
    answering,
    body_of,
    build,
    chunk,
    fast_config,
    raising,
    read_timeout,
    refused,
    register,
    request,
    reset,
    sse,
)


def assert_idle(svc):
    assert all(n.in_flight == 0 for n in svc.registry.nodes())
    assert svc.budget.active_requests == 0 and svc.budget.active_retries == 0


def ok_answer(text="fine"):
    return lambda: FakeResp(200, json.dumps({"choices": [{"text": text}]}).encode())


def stream_of(*texts, done=True):
    """A stream of ``texts`` whose last chunk finishes the choice (``stop``)."""

    def make():
        chunks = [chunk(t, finish(i, texts)) for i, t in enumerate(texts)] + (
            [DONE] if done else []
        )
        return FakeResp(200, chunks=chunks)

    return make


def finish(i, texts):
    return "stop" if i == len(texts) - 1 else None


# -- non-streaming failover ------------------------------------------------------------------


def test_connect_refused_is_retried_on_another_node():
    # p2c keeps trying the refusing node until it is ejected; cache_aware would follow
    # this one prompt to the node that answered it (tests/test_placement.py).
    svc, fleet = build(routing={"policy": "p2c"})
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = raising(refused)
    fleet.behaviour[B] = answering(ok_answer("from b"))
    sent = 0
    while svc.registry.get("a").status is not NodeStatus.EJECTED and sent < 200:
        resp = svc.proxy.forward(request(svc, rid=f"r{sent}"))
        assert resp.status == 200 and b"from b" in body_of(resp)
        assert resp.headers["X-Spotrelay-Node"] == "b"
        assert resp.headers["X-Request-ID"] == f"r{sent}"
        sent += 1
    assert len(fleet.calls_to(A)) == 3, "ejected after 3 consecutive failures"
    for i in range(10):
        assert svc.proxy.forward(request(svc, rid=f"after{i}")).status == 200
    assert len(fleet.calls_to(A)) == 3, "an ejected node gets no traffic"
    assert {c["headers"]["X-Request-ID"] for c in fleet.calls_to(A)} <= {
        f"r{i}" for i in range(sent)
    }
    assert_idle(svc)


def test_each_retryable_status_goes_elsewhere():
    for status in (429, 500, 502, 503, 504):
        svc, fleet = build()
        register(svc, "a", A)
        register(svc, "b", B)
        fleet.behaviour[A] = answering(lambda s=status: FakeResp(s, b'{"error": "busy"}'))
        fleet.behaviour[B] = answering(ok_answer())
        results = [svc.proxy.forward(request(svc)) for _ in range(5)]
        assert [r.status for r in results] == [200] * 5, status


def test_client_errors_pass_through_without_retry():
    svc, fleet = build()
    register(svc, "a", A)
    register(svc, "b", B)
    bad = json.dumps({"error": {"message": "prompt too long"}}).encode()
    fleet.behaviour[A] = fleet.behaviour[B] = answering(lambda: FakeResp(400, bad))
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 400 and body_of(resp) == bad
    assert len(fleet.calls) == 1


def test_last_upstream_error_is_passed_through_when_all_fail():
    svc, fleet = build()
    for i, url in enumerate((A, B, C)):
        register(svc, f"n{i}", url)
        fleet.behaviour[url] = answering(
            lambda: FakeResp(503, b'{"error": "overloaded"}', headers={"Retry-After": "7"})
        )
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 503 and body_of(resp) == b'{"error": "overloaded"}'
    assert resp.headers["Retry-After"] == "7"
    assert len({c["target"] for c in fleet.calls}) == 3, "three different nodes"
    assert_idle(svc)


def test_attempts_are_capped_and_connection_failures_become_502():
    svc, fleet = build(retry={"max_attempts": 2})
    for i, url in enumerate((A, B, C)):
        register(svc, f"n{i}", url)
        fleet.behaviour[url] = raising(reset)
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 502 and len(fleet.calls) == 2
    err = json.loads(body_of(resp))["error"]
    assert err["code"] == "upstream_error" and "reset" in err["message"]


def test_timeouts_become_504():
    svc, fleet = build()
    register(svc, "a", A)
    fleet.behaviour[A] = raising(read_timeout)
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 504
    assert json.loads(body_of(resp))["error"]["code"] == "upstream_timeout"


def test_reset_while_reading_the_body_is_still_retried():
    svc, fleet = build()
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = answering(lambda: FakeResp(200, read_error=reset()))
    fleet.behaviour[B] = answering(ok_answer())
    for _ in range(3):
        assert svc.proxy.forward(request(svc)).status == 200


def test_retry_budget_exhausted_means_no_retry():
    svc, fleet = build(retry={"budget_percent": 0, "min_retry_concurrency": 0})
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = fleet.behaviour[B] = raising(refused)
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 502 and len(fleet.calls) == 1
    assert svc.metrics.budget_exhausted._value.get() == 1


def test_deadline_stops_retries():
    svc, fleet = build(timeouts={"request_deadline_s": 1})
    register(svc, "a", A)
    register(svc, "b", B)
    req = request(svc)
    req.deadline = time.monotonic() - 0.001
    resp = svc.proxy.forward(req)
    assert resp.status == 504 and fleet.calls == []


def test_short_deadline_shortens_upstream_timeouts():
    svc, fleet = build(timeouts={"request_deadline_s": 1, "first_byte_s": 600})
    register(svc, "a", A)
    fleet.behaviour[A] = answering(ok_answer())
    svc.proxy.forward(request(svc))
    assert fleet.calls[0]["read_timeout"] <= 1 and fleet.calls[0]["connect_timeout"] <= 1


def test_session_affinity_routes_a_session_to_one_node():
    svc, fleet = build()
    for i, url in enumerate((A, B, C)):
        register(svc, f"n{i}", url)
    targets = set()
    for _ in range(10):
        svc.proxy.forward(request(svc, session="user-42"))
        targets.add(fleet.calls[-1]["target"])
    assert len(targets) == 1


def test_hostname_nodes_are_reached_at_the_vetted_address_with_their_name():
    from spotrelay.router.transport.netpolicy import NetPolicy
    from spotrelay.router.transport.upstream import make_pool

    dns = {"node-1.internal": ["10.0.0.9"]}
    svc, fleet = build(dns=dns)
    register(svc, "a", "http://node-1.internal:8000")
    assert fleet.pools[0].target.address == "10.0.0.9"
    policy = NetPolicy(["10.0.0.0/8"], lambda host, port: dns[host])
    pool = make_pool(policy.validate("http://node-1.internal:8000"), 4)
    assert (pool.address, pool.port, pool.host_header) == ("10.0.0.9", 8000, "node-1.internal:8000")
    tls = make_pool(policy.validate("https://node-1.internal"), 4)
    assert tls.host_header == "node-1.internal" and tls.tls_server_name == "node-1.internal"
    assert make_pool(policy.validate("http://10.0.0.5:80"), 4).host_header == "10.0.0.5"


# -- capacity --------------------------------------------------------------------------------


def test_unknown_model_is_404():
    svc, _fleet = build()
    register(svc, "a", A)
    resp = svc.proxy.forward(request(svc, {"model": "nope", "prompt": "x"}))
    assert resp.status == 404
    err = json.loads(body_of(resp))["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_no_capacity_waits_then_503_with_retry_after():
    svc, _fleet = build(routing={"no_capacity_wait_s": 0.3, "retry_after_s": 4})
    started = time.monotonic()
    resp = svc.proxy.forward(request(svc))
    assert 0.25 <= time.monotonic() - started < 2
    assert resp.status == 503 and resp.headers["Retry-After"] == "4"
    assert json.loads(body_of(resp))["error"]["code"] == "no_capacity"
    assert_idle(svc)


def test_capacity_arriving_during_the_wait_serves_the_request():
    svc, fleet = build(routing={"no_capacity_wait_s": 5})
    register(svc, "a", A, state="draining")
    fleet.behaviour[B] = answering(ok_answer("late node"))
    timer = threading.Timer(0.2, lambda: register(svc, "b", B))
    timer.start()
    started = time.monotonic()
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 200 and b"late node" in body_of(resp)
    assert time.monotonic() - started < 2


def test_draining_node_gets_no_new_requests():
    svc, fleet = build()
    register(svc, "a", A)
    register(svc, "b", B)
    assert svc.drain_node("a").doc == {"id": "a", "state": "draining", "in_flight": 0}
    for _ in range(10):
        svc.proxy.forward(request(svc))
    assert fleet.calls_to(A) == []


# -- health probing --------------------------------------------------------------------------


def test_ejected_node_is_probed_and_restored():
    svc, fleet = build(health={"consecutive_failures": 1, "base_ejection_s": 0.05})
    a = register(svc, "a", A)
    register(svc, "b", B)
    healthy = {"ok": False}

    def node_a(call):
        if call["url"] == "/health":
            return FakeResp(200 if healthy["ok"] else 503, b"")
        raise refused()

    fleet.behaviour[A] = node_a
    while a.status is not NodeStatus.EJECTED:
        svc.proxy.forward(request(svc))
    time.sleep(0.06)
    assert svc.health.probe_ejected() == []
    assert a.status is NodeStatus.EJECTED
    healthy["ok"] = True
    assert svc.health.probe_ejected() == [a]
    assert a.status is NodeStatus.READY


# -- streams ---------------------------------------------------------------------------------


def stream_request(svc, **extra):
    return request(svc, {"model": "m", "prompt": "hi", "stream": True, **extra})


def test_stream_is_relayed_event_by_event():
    svc, fleet = build()
    register(svc, "a", A)
    fleet.behaviour[A] = answering(stream_of("Hel", "lo"))
    resp = svc.proxy.forward(stream_request(svc))
    assert resp.status == 200 and resp.content_type.startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    pieces = list(resp.body)
    resp.body.close()
    assert pieces == [chunk("Hel"), chunk("lo", "stop"), DONE]
    assert_idle(svc)


def test_stream_failing_before_its_first_event_is_retried():
    for first_node in (
        raising(refused),
        answering(lambda: FakeResp(200, chunks=[])),  # EOF before any event
        answering(lambda: FakeResp(200, chunks=[b'data: {"id": 1', reset()])),  # partial, reset
        answering(lambda: FakeResp(200, chunks=[sse({"error": {"message": "engine died"}})])),
        answering(lambda: FakeResp(503, b"{}")),
    ):
        svc, fleet = build(health={"consecutive_failures": 100})
        register(svc, "a", A)
        register(svc, "b", B)
        fleet.behaviour[A] = first_node
        fleet.behaviour[B] = answering(stream_of("ok"))
        for _ in range(4):
            resp = svc.proxy.forward(stream_request(svc))
            assert body_of(resp) == chunk("ok", "stop") + DONE
        assert_idle(svc)


@pytest.mark.parametrize(
    "tail, reason",
    [
        ([], BreakReason.TRUNCATED),  # a clean end of the body before any finish_reason
        ([DONE], BreakReason.TRUNCATED),  # [DONE] before any finish_reason
        ([reset()], BreakReason.RESET),
        ([read_timeout()], BreakReason.IDLE_TIMEOUT),
        ([sse({"error": {"message": "CUDA error"}}), DONE], BreakReason.ERROR_EVENT),
        ([b'data: {"partial', reset()], BreakReason.RESET),
    ],
)
def test_break_after_first_byte_ends_with_one_error_event_then_done(tail, reason):
    svc, fleet = build()
    a = register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = fleet.behaviour[B] = answering(
        lambda: FakeResp(200, chunks=[chunk("one"), chunk("two"), *tail])
    )
    resp = svc.proxy.forward(stream_request(svc))
    data = body_of(resp)
    events = data.split(b"\n\n")[:-1]
    assert events[:2] == [chunk("one")[:-2], chunk("two")[:-2]]
    assert len(events) == 4 and events[3] == b"data: [DONE]"
    err = json.loads(events[2][len(b"data: ") :])["error"]
    assert err["type"] == "server_error" and err["code"] == "upstream_stream_broken"
    assert str(reason) in err["message"]
    assert b"partial" not in data, "a partial event never reaches the client"
    node = svc.registry.get(resp.headers["X-Spotrelay-Node"])
    assert svc.registry.outliers.of(node).total_failures == 1
    assert svc.metrics.stream_breaks.labels(str(reason))._value.get() == 1
    assert a.in_flight == 0
    assert_idle(svc)


def choice_chunk(index, text, finish=None):
    return sse({"id": "cmpl-1", "object": "text_completion", "model": "m",
                "choices": [{"index": index, "text": text, "finish_reason": finish}]})  # fmt: skip


@pytest.mark.parametrize(
    "body, chunks, truncated",
    [
        # n=2: both choices must finish before [DONE]
        ({"n": 2}, [choice_chunk(0, "a", "stop"), choice_chunk(1, "b"), DONE], True),
        ({"n": 2}, [choice_chunk(0, "a", "stop"), choice_chunk(1, "b", "length"), DONE], False),
        # a list of two prompts, one choice each
        ({"prompt": ["x", "y"]}, [choice_chunk(1, "b", "stop"), DONE], True),
        (
            {"prompt": ["x", "y"]},
            [choice_chunk(1, "b", "stop"), choice_chunk(0, "a", "stop"), DONE],
            False,
        ),
        # token ids are one prompt
        ({"prompt": [1, 2, 3]}, [choice_chunk(0, "a", "stop"), DONE], False),
        # a finish in the same event as other text, spaced JSON
        (
            {},
            [b'data: {"choices": [{"index": 0, "text": "a", "finish_reason": "stop"}]}\n\n', DONE],
            False,
        ),
    ],
)
def test_every_choice_must_finish_before_the_stream_ends(body, chunks, truncated):
    svc, fleet = build()
    register(svc, "a", A)
    fleet.behaviour[A] = answering(lambda: FakeResp(200, chunks=list(chunks)))
    data = body_of(svc.proxy.forward(stream_request(svc, **body)))
    assert data.endswith(DONE)
    assert (b"upstream_stream_broken" in data) is truncated
    assert svc.metrics.stream_breaks.labels("truncated")._value.get() == int(truncated)


def test_client_disconnect_closes_the_upstream():
    svc, fleet = build()
    register(svc, "a", A)
    made = []

    def node(call):
        made.append(FakeResp(200, chunks=[chunk("a"), chunk("b"), chunk("c", "stop"), DONE]))
        return made[-1]

    fleet.behaviour[A] = node
    resp = svc.proxy.forward(stream_request(svc))
    it = iter(resp.body)
    assert next(it) == chunk("a")
    resp.body.close()  # what the WSGI server does when the client is gone
    assert made[0].closed, "closing the socket makes vLLM abort the request"
    assert svc.metrics.client_disconnects._value.get() == 1
    assert_idle(svc)


def test_stream_never_iterated_still_releases_everything():
    svc, fleet = build()
    register(svc, "a", A)
    fleet.behaviour[A] = answering(stream_of("x"))
    resp = svc.proxy.forward(stream_request(svc))
    resp.body.close()
    assert_idle(svc)


def test_non_stream_answer_to_a_stream_request_passes_through():
    svc, fleet = build()
    register(svc, "a", A)
    fleet.behaviour[A] = answering(lambda: FakeResp(400, b'{"error": {"message": "bad"}}'))
    resp = svc.proxy.forward(stream_request(svc))
    assert resp.status == 400 and body_of(resp) == b'{"error": {"message": "bad"}}'


# -- the resume seam -------------------------------------------------------------------------


class Recorder(EndWithError):
    """A handler that records events and breaks (what a resume handler would see)."""

    def __init__(self, req, proxy, script=None):
        self.req, self.proxy = req, proxy
        self.events: list[bytes] = []
        self.breaks: list[StreamBreak] = []
        self.script = script or {}

    def on_event(self, event):
        self.events.append(event)
        action = self.script.get(len(self.events))
        if action == "complete":
            raise ClientStreamComplete(b"data: synthetic-end\n\n")
        if action == "abandon":
            raise AbandonUpstream("handler said so", b"")
        return event

    def on_break(self, brk):
        self.breaks.append(brk)
        if len(self.breaks) > 1:
            return super().on_break(brk)
        # What resume does: ask the relay to continue on another node with a new body.
        return Step(body={**self.req.doc, "prompt": "continued"})


def test_break_goes_through_the_handler_which_can_continue_elsewhere():
    handlers = []

    def factory(req, proxy):
        handlers.append(Recorder(req, proxy))
        return handlers[-1]

    svc, fleet = build(handler_factory=factory)
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = answering(lambda: FakeResp(200, chunks=[chunk("Hel"), reset()]))
    fleet.behaviour[B] = answering(stream_of("lo"))
    req = stream_request(svc)
    req.tried.clear()
    svc.registry.get("b").in_flight = 10  # make sure the first attempt goes to a
    resp = svc.proxy.forward(req)
    svc.registry.get("b").in_flight = 0
    assert body_of(resp) == chunk("Hel") + chunk("lo", "stop") + DONE
    [handler] = handlers
    [brk] = handler.breaks
    assert brk.reason is BreakReason.RESET and brk.node_id == "a" and brk.events_sent == 1
    follow_up = next(c for c in fleet.calls if c["target"] == B)
    assert json.loads(follow_up["body"])["prompt"] == "continued"
    assert follow_up["headers"]["X-Request-ID"] == req.request_id
    assert_idle(svc)


@pytest.mark.parametrize("action, expect_break", [("complete", False), ("abandon", True)])
def test_handler_can_end_the_stream_or_abandon_the_upstream(action, expect_break):
    handlers = []

    def factory(req, proxy):
        handlers.append(Recorder(req, proxy, {1: action}))
        return handlers[-1]

    svc, fleet = build(handler_factory=factory)
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = fleet.behaviour[B] = answering(stream_of("x", "y"))
    data = body_of(svc.proxy.forward(stream_request(svc)))
    [handler] = handlers
    assert bool(handler.breaks) is expect_break
    if action == "complete":
        assert data == b"data: synthetic-end\n\n"
    else:
        assert handler.breaks[0].reason is BreakReason.ABANDONED


def test_sse_framing_across_odd_chunk_boundaries():
    svc, _fleet = build()
    a = register(svc, "a", A)
    raw = chunk("one") + chunk("two").replace(b"\n", b"\r\n") + DONE
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]
    up = Upstream(a, FakeResp(200, chunks=pieces), svc.registry, 0.0)
    svc.registry.acquire(a)
    events = [e for batch in up.event_batches() for e in batch]
    assert events == [chunk("one"), chunk("two"), DONE]
    up.close()
    assert a.in_flight == 0


@pytest.mark.parametrize("trickle", [False, True], ids=["silence", "partial_event_trickle"])
def test_stalled_stream_is_ended_by_the_idle_watchdog(trickle):
    """A real node connection: one event, then silence; the watchdog ends it cleanly.

    Idleness is measured in events: a node trickling a partial event (a byte at a
    time, never the blank line) is as silent as one sending nothing."""
    event = chunk("only")

    def stalls(conn, index):
        server.read_request(conn)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%b\r\n" % (len(event), event)
        )
        for _ in range(50):
            if trickle:
                conn.sendall(b"1\r\nx\r\n")
            time.sleep(0.1)

    server = RawServer(stalls)
    try:
        svc = RouterService(
            fast_config(timeouts={"stream_idle_s": 0.4}),
            "node-secret",
            stream_handler_factory=lambda req, proxy: EndWithError(),
        )
        svc.start()
        register(svc, "a", f"http://127.0.0.1:{server.port}")
        started = time.monotonic()
        resp = svc.proxy.forward(stream_request(svc))
        data = body_of(resp)
        assert 0.3 < time.monotonic() - started < 3
        assert data.startswith(event) and data.endswith(DONE)
        assert b"idle_timeout" in data
        assert svc.metrics.stream_breaks.labels("idle_timeout")._value.get() == 1
        assert len(svc.watchdog) == 0
        assert_idle(svc)
        svc.stop()
    finally:
        server.close()


def test_watchdog_reports_a_node_whose_open_streams_all_stall():
    """Frozen: every stream open on the node stalled, and at least frozen_min_streams."""
    svc, _fleet = build()
    nodes = {n: register(svc, n, url) for n, url in (("a", A), ("b", B), ("c", C))}
    frozen, hedged = [], []
    dog = IdleWatchdog(
        frozen_min_streams=2, on_frozen=lambda node, n, s: frozen.append((node.id, n, s))
    )
    now = 1000.0

    def open_stream(node_id, silent_s):
        up = Upstream(nodes[node_id], FakeResp(200, chunks=[]), svc.registry, 0.0)
        up.idle_s, up.last_activity = 60.0, now - silent_s
        up.stall = StallWatch(StallPolicy(stall_floor_s=1.5), nodes[node_id].rhythm)
        up.on_stall = lambda u: hedged.append(u.node.id)
        dog.watch(up)

    open_stream("a", 2.0)
    open_stream("a", 3.0)  # a: both stalled -> frozen
    open_stream("b", 2.0)
    open_stream("b", 0.2)  # b: one of two -> a slow stream, not a frozen node
    open_stream("c", 5.0)  # c: one alone -> hedged, never frozen
    assert dog.sweep(now) == []
    assert frozen == [("a", 2, 3.0)]
    assert sorted(hedged) == ["a", "a", "b", "c"]
