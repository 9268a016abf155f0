"""The router's defences as plain classes: deadlines, caps, loop marks, labels, escapes.

The same behaviour is exercised end to end against a real router in
``test_router_security.py``; these pin the edge cases fast.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time

import pytest

from spotrelay.core.logs import HumanFormatter, JsonFormatter, escape_controls
from spotrelay.router.stream.disconnect import ClientLink, ClientWatch
from spotrelay.router.transport.httpguard import (
    ClientTimeout,
    ConnectionLimiter,
    GuardedSocket,
    GuardSettings,
    client_gone,
    error_for,
)
from spotrelay.router.transport.loopmark import HOP_HEADER
from spotrelay.router.transport.netpolicy import NetPolicy, NodeURLError, OwnEndpoints
from tests.support.clock import Clock
from tests.support.router_fakes import (
    A,
    B,
    FakeResp,
    answering,
    body_of,
    build,
    raising,
    register,
    request,
)

# -- slow clients ----------------------------------------------------------------------------


class ScriptedSocket:
    """recv() answers from a script; records the timeout it was given."""

    def __init__(self, *replies: bytes | BaseException) -> None:
        self.replies = list(replies)
        self.timeouts: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)

    def recv(self, size: int, *flags: int) -> bytes:
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def test_head_deadline_counts_from_accept_then_from_each_request():
    clock = Clock(100.0)
    raw = ScriptedSocket(b"GET /", b" HTTP/1.1\r\n\r\n", b"POST", TimeoutError())
    sock = GuardedSocket(raw, GuardSettings(header_timeout_s=10, body_timeout_s=30), clock=clock)
    clock.now += 4
    assert sock.recv(10) == b"GET /" and raw.timeouts[-2:] == [pytest.approx(6), None]
    clock.now += 5
    sock.recv(10)
    assert raw.timeouts[-2] == pytest.approx(1)
    sock.start_body()
    sock.start_idle()  # keep-alive: no deadline until the next request's first byte
    clock.now += 60
    assert sock.recv(10) == b"POST" and raw.timeouts[-1] is None
    with pytest.raises(ClientTimeout) as err:
        sock.recv(10)  # the next head read times out on the socket
    assert raw.timeouts[-2:] == [pytest.approx(10), None]
    assert error_for(err.value).status == 408


def test_body_deadline_and_expired_deadline_without_a_read():
    clock = Clock(100.0)
    raw = ScriptedSocket(b"x")
    sock = GuardedSocket(raw, GuardSettings(header_timeout_s=1, body_timeout_s=30), clock=clock)
    sock.start_body()
    clock.now += 29
    assert sock.recv(1) == b"x" and raw.timeouts[-2] == pytest.approx(1)
    clock.now += 2
    with pytest.raises(ClientTimeout, match="body"):
        sock.recv(1)


def test_connection_cap_per_address_and_listener_with_exempt_networks():
    limiter = ConnectionLimiter(2, exempt=["10.0.0.0/24"])
    assert limiter.acquire("data", "1.2.3.4") and limiter.acquire("data", "1.2.3.4")
    assert not limiter.acquire("data", "1.2.3.4")
    assert limiter.acquire("control", "1.2.3.4"), "the control listener counts separately"
    assert limiter.acquire("data", "5.6.7.8")
    assert all(limiter.acquire("data", "10.0.0.9") for _ in range(10))
    limiter.release("data", "1.2.3.4")
    assert limiter.acquire("data", "1.2.3.4")
    assert ConnectionLimiter(0).acquire("data", "1.2.3.4"), "0 = no cap"


def test_idle_timeout_shrinks_as_the_listener_fills_and_only_idle_connections_are_due():
    from spotrelay.router.transport.overload import IdlePolicy, IdleReaper

    policy = IdlePolicy(keepalive_s=75, keepalive_min_s=1, start=0.5, saturation=0.9)
    assert policy.idle_timeout(40, 100) == 75  # below the start: the configured keep-alive
    assert policy.idle_timeout(70, 100) == pytest.approx(75 - 74 * 0.5)  # half-way: linear
    assert policy.idle_timeout(95, 100) == 1
    clock = Clock()
    reaper = IdleReaper(policy, capacity=10, clock=clock)
    settings = GuardSettings()
    conns = [GuardedSocket(ScriptedSocket(b"GET"), settings, clock=clock) for _ in range(9)]
    for conn in conns:
        reaper.add(conn)
    conns[0].recv(3)  # a request arriving: never cut
    clock.now += 2
    conns[1].start_body()
    conns[1].start_idle()  # answered just now: idle, but not long enough
    due = reaper.due()  # 9 of 10 open: saturated, idle for 1 s is enough
    assert conns[0] not in due and conns[1] not in due and len(due) == 7
    for conn in conns[2:]:
        reaper.discard(conn)
    assert reaper.due() == [], "two open of ten: below the start, nothing is due"


def test_a_throttled_log_line_counts_what_it_stood_for():
    from spotrelay.router.transport.overload import LogThrottle, held_note

    clock = Clock()
    throttle = LogThrottle(10, clock=clock)
    assert throttle.admit(408) == 0
    assert [throttle.admit(408) for _ in range(5)] == [None] * 5
    assert throttle.admit(400) == 0, "each key has its own interval"
    clock.now += 10
    held = throttle.admit(408)
    assert held == 5 and held_note(held, 10) == " (+5 like it in the last 10s)"


@pytest.mark.parametrize(
    "peer, forwarded, client",
    [
        ("10.0.1.7", ["203.0.113.9"], "203.0.113.9"),  # the load balancer names the client
        ("10.0.1.7", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),  # left of it: the client's own
        ("10.0.1.7", ["203.0.113.9, 10.0.2.4"], "203.0.113.9"),  # through two trusted hops
        ("10.0.1.7", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),  # several header lines
        ("10.0.1.7", ["junk, 203.0.113.9"], "203.0.113.9"),
        ("10.0.1.7", ["203.0.113.9:4711"], "203.0.113.9"),
        ("10.0.1.7", ["[2001:db8::1]:4711"], "2001:db8::1"),
        ("10.0.1.7", ["10.0.2.4, junk"], "10.0.1.7"),  # garbage from the proxy side
        ("10.0.1.7", [], "10.0.1.7"),  # no header: the proxy itself
        ("198.51.100.5", ["203.0.113.9"], "198.51.100.5"),  # a direct client's header: ignored
    ],
)
def test_the_client_behind_trusted_proxies_is_the_right_most_untrusted_address(
    peer, forwarded, client
):
    from spotrelay.router.transport.clientaddr import Networks, real_client

    assert real_client(peer, forwarded, Networks(["10.0.1.0/24", "10.0.2.0/24"])) == client
    assert real_client(peer, forwarded, Networks()) == peer, "no trusted proxies: the peer"


def test_parser_errors_map_to_client_statuses():
    from gunicorn.http import errors

    assert error_for(errors.LimitRequestLine(9000, 4094)).status == 414
    assert error_for(errors.LimitRequestHeaders("fields")).status == 431
    assert error_for(errors.InvalidChunkSize(b"zz")).status == 400
    assert error_for(errors.UnsupportedTransferCoding("gzip")).status == 400
    assert error_for(errors.InvalidHeader("X")).status == 400
    assert error_for(RuntimeError("bug")) is None  # a real server error stays a 500


# -- client disconnects -------------------------------------------------------------------------


def test_client_gone_sees_a_close_but_not_a_pipelined_request():
    server = socket.create_server(("127.0.0.1", 0))
    with server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with conn:
            assert not client_gone(conn)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert not client_gone(conn), "data to read is not a disconnect"
            client.close()
            conn.recv(100)
            assert client_gone(conn)


def test_client_watch_aborts_the_attached_upstream():
    gone = {"flag": False}
    watch = ClientWatch(is_gone=lambda sock: gone["flag"])
    link = ClientLink(object())
    upstream_server = socket.create_server(("127.0.0.1", 0))
    with upstream_server, socket.create_connection(upstream_server.getsockname()) as upstream:
        with watch.watching(link):
            link.attach(upstream)
            assert watch.sweep() == [] and len(watch) == 1
            gone["flag"] = True
            assert watch.sweep() == [link] and link.gone
            upstream.settimeout(2)
            assert upstream.recv(10) == b"", "shut down: a blocked read ends at once"
        assert len(watch) == 0


def test_client_watch_nests_and_calls_the_outer_blocks_interrupt():
    """An assembled answer watches its client while it reads a stream; the attempts
    inside (continuations) watch it too: their end must not end the outer watch."""
    gone = {"flag": False}
    watch = ClientWatch(is_gone=lambda sock: gone["flag"])
    link = ClientLink(object())
    interrupted: list[str] = []
    with watch.watching(link, interrupt=lambda: interrupted.append("stream")):
        with watch.watching(link):  # an attempt for a continuation
            assert len(watch) == 1
        assert len(watch) == 1 and link.interrupt is not None
        gone["flag"] = True
        assert watch.sweep() == [link] and interrupted == ["stream"]
    assert len(watch) == 0 and link.interrupt is None and link.depth == 0


def test_client_leaving_during_the_attempt_is_not_the_nodes_failure():
    svc, fleet = build()
    register(svc, "a", A)
    req = request(svc)
    req.client = ClientLink(object())

    def leave(call):
        req.client.gone = True  # what the watch records when the client closes
        raise ConnectionResetError("shut down by the client watch")

    fleet.behaviour[A] = leave
    resp = svc.proxy.forward(req)
    assert resp.status == 499
    node = svc.registry.get("a")
    assert node.in_flight == 0 and svc.registry.outliers.of(node).total_failures == 0
    assert len(fleet.calls_to(A)) == 1, "no retry for a client that left"
    text = svc.metrics.render().decode()
    assert "spotrelay_router_client_disconnects_total 1.0" in text


# -- 7: hop marks --------------------------------------------------------------------------------


def test_proxied_requests_carry_the_routers_hop_mark():
    svc, fleet = build()
    register(svc, "a", A)
    req = request(svc)
    req.hops = ("upstream-router",)
    assert svc.proxy.forward(req).status == 200
    upstream, mark = fleet.calls_to(A)[0]["headers"][HOP_HEADER].split(", ")
    assert upstream == "upstream-router" and len(mark) == 24
    assert not svc.proxy.loop_marks.loops_back([mark]), "open only while the attempt waits"


def test_a_508_loop_answer_moves_on_without_ejecting_the_node():
    svc, fleet = build()
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = answering(lambda: FakeResp(508, b"{}", headers={"X-Spotrelay-Loop": "1"}))
    fleet.behaviour[B] = answering(lambda: FakeResp(200, b'{"ok": 1}'))
    for i in range(6):
        assert svc.proxy.forward(request(svc, rid=f"r{i}")).status == 200
    node = svc.registry.get("a")
    failures = svc.registry.outliers.of(node).total_failures
    assert failures == 0 and not node.ejected, "anyone on the path can send a 508"
    assert len(fleet.calls_to(A)) >= 1


def test_own_endpoints_on_a_wildcard_bind_are_every_local_address():
    own = OwnEndpoints("0.0.0.0", (8080, 8081))
    policy = NetPolicy(["127.0.0.0/8", "10.0.0.0/8"], own=own)
    for url in ("http://127.0.0.1:8080", "http://127.0.0.9:8081", "http://[::ffff:127.0.0.1]:8080"):
        with pytest.raises(NodeURLError, match="own listener"):
            policy.validate(url)
    assert policy.validate("http://127.0.0.1:8000").port == 8000
    assert policy.validate("http://10.9.9.9:8080").address == "10.9.9.9", "not a local address"
    named = NetPolicy(
        ["127.0.0.0/8"],
        resolver=lambda host, port: ["127.0.0.3"],
        own=OwnEndpoints("127.0.0.3", (8080,), resolver=lambda host, port: ["127.0.0.3"]),
    )
    with pytest.raises(NodeURLError, match="own listener"):
        named.validate("http://router.internal:8080")


# -- 8: node URLs and exceptions in attempts ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("http://\uff11\uff12\uff17.0.0.1:\uff18\uff10\uff10\uff10", "http://127.0.0.1:8000"),
        ("HTTP://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ],
)
def test_node_urls_are_normalised(url, expect):
    assert NetPolicy(["127.0.0.0/8"]).validate(url).url == expect


def test_idna_host_names_are_encoded_before_resolution():
    seen = []
    policy = NetPolicy(
        ["10.0.0.0/8"], resolver=lambda host, port: seen.append(host) or ["10.1.1.1"]
    )
    target = policy.validate("http://b\u00fccher.internal:8000")
    assert seen == ["xn--bcher-kva.internal"] and target.host == "xn--bcher-kva.internal"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:0",
        "http://127.0.0.1\u00a0:8000",
        "http://127.0.0.1:8000\n",
        "http://127.0.0.1:\u0668\u0660",
        "http://\u200b127.0.0.1:8000",
        "http://exa\x00mple:8000",
    ],
)
def test_odd_node_urls_are_refused(url):
    with pytest.raises(NodeURLError):
        NetPolicy(["127.0.0.0/8"]).validate(url)


def test_any_exception_in_an_attempt_is_a_node_failure_not_a_500():
    svc, fleet = build()
    register(svc, "a", A)
    register(svc, "b", B)
    fleet.behaviour[A] = raising(lambda: UnicodeEncodeError("latin-1", "\uff11", 0, 1, "no"))
    fleet.behaviour[B] = raising(lambda: KeyError("surprise"))
    resp = svc.proxy.forward(request(svc))
    assert resp.status == 502 and json.loads(body_of(resp))["error"]["code"] == "upstream_error"
    for node_id in ("a", "b"):
        node = svc.registry.get(node_id)
        assert node.in_flight == 0 and svc.registry.outliers.of(node).total_failures == 1


# -- 9 and 1: bounded registrations and labels --------------------------------------------------


def test_registration_cap():
    svc, _ = build(registry={"max_nodes": 2})
    register(svc, "a", A)
    register(svc, "b", B)
    body = json.dumps({"url": "http://10.0.0.3:8000", "models": ["m"]}).encode()
    refused = svc.put_node("c", body)
    assert refused.status == 429 and "registry.max_nodes" in refused.doc["error"]
    assert svc.put_node("a", json.dumps({"url": A, "models": ["m"]}).encode()).status == 200
    svc.delete_node("b")
    assert svc.put_node("c", body).status == 200


def test_model_labels_are_only_served_models():
    svc, _ = build()
    metrics = svc.metrics
    assert metrics.model_label("anything") == "other"
    register(svc, "a", A, models=("m", "n"))
    assert metrics.model_label("m") == "m" and metrics.model_label("zzz") == "other"


# -- 5: escaped log fields ----------------------------------------------------------------------


def test_human_log_lines_escape_control_characters_in_message_and_fields():
    record = logging.makeLogRecord(
        {"msg": "model %s", "args": ("a\nFORGED",), "levelname": "INFO", "name": "x"}
    )
    record.model = "b\r\x1b[31m\u2028"
    line = HumanFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "a\\x0aFORGED" in line and "model=b\\x0d\\x1b[31m\\u2028" in line
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "model a\nFORGED"  # JSON escapes on its own
    assert escape_controls("plain text") == "plain text"


def test_tracebacks_still_span_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(HumanFormatter())
    logger = logging.getLogger("test.guards")
    logger.addHandler(handler)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "Traceback (most recent call last):\n" in stream.getvalue()


def test_a_client_cannot_trigger_the_loop_refusal():
    from spotrelay.router.app import create_app
    from spotrelay.router.transport.loopmark import MAX_HOPS, parse_hops

    assert parse_hops(",".join(f"r{i}" for i in range(100)))[-1] == "r99"
    assert len(parse_hops(",".join(f"r{i}" for i in range(100)))) == MAX_HOPS
    svc, fleet = build()
    register(svc, "a", A)
    client = create_app(svc).test_client()
    made_up = ", ".join(f"router-{i}" for i in range(40))
    resp = client.post("/v1/completions", json={"model": "m"}, headers={HOP_HEADER: made_up})
    assert resp.status_code == 200
    sent = fleet.calls_to(A)[0]["headers"][HOP_HEADER]
    assert sent.startswith("router-0, ") and sent.split(", ")[-2] == "router-39"
    replayed = client.post("/v1/completions", json={"model": "m"}, headers={HOP_HEADER: sent})
    assert replayed.status_code == 200, "a mark whose attempt has its answer is dead"
    # A genuine loop: the request comes back while this worker's attempt still waits.
    with svc.proxy.loop_marks.issued() as mark:
        looped = client.post("/v1/completions", json={"model": "m"}, headers={HOP_HEADER: mark})
    assert looped.status_code == 508 and looped.headers["X-Spotrelay-Loop"] == "1"
    assert looped.get_json()["error"]["code"] == "loop_detected"


def test_a_client_leaving_during_a_capacity_wait_stops_the_wait():
    class LeavesOnThirdLook(ClientLink):
        looks = 0

        def check(self, is_gone=None) -> bool:
            self.looks += 1
            self.gone = self.gone or self.looks >= 3
            return self.gone

    svc, _ = build(routing={"no_capacity_wait_s": 30})
    req = request(svc)
    req.client = LeavesOnThirdLook(object())
    started = time.monotonic()
    resp = svc.proxy.forward(req)  # no node registered: it would wait 30 s
    assert resp.status == 499 and time.monotonic() - started < 5
    assert "spotrelay_router_client_disconnects_total 1.0" in svc.metrics.render().decode()


def test_one_poll_sweeps_many_clients():

    server = socket.create_server(("127.0.0.1", 0))
    with server:
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        conns = [server.accept()[0] for _ in range(3)]
        try:
            clients[0].close()  # left
            clients[1].sendall(b"GET / HTTP/1.1\r\n\r\n")  # pipelined: still there
            watch = ClientWatch()
            links = [ClientLink(c) for c in conns] + [ClientLink(object())]
            for link in links:
                watch._watched.add(link)
            assert wait_for_sweep(watch) == [links[0]]
            assert [link.gone for link in links] == [True, False, False, False]
        finally:
            for s in clients[1:] + conns:
                s.close()


def wait_for_sweep(watch: ClientWatch) -> list[ClientLink]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        gone = watch.sweep()
        if gone:
            return gone
        time.sleep(0.01)
    return []
