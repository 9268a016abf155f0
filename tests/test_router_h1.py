"""The router's HTTP/1.1 node client against scripted raw-socket servers on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from spotrelay.router.transport.h1 import ConnectFailed, Pool, ProtocolError
from tests.support.raw_server import RawServer


@pytest.fixture
def serve():
    servers: list[RawServer] = []

    def make(handler):
        servers.append(RawServer(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def pool_for(server: RawServer, maxsize: int = 256) -> Pool:
    return Pool("127.0.0.1", server.port, host_header=f"127.0.0.1:{server.port}", maxsize=maxsize)


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"ok": 1 }'


def test_sized_body_and_keep_alive_reuse(serve):
    def handler(conn, index):
        while server.read_request(conn) is not None:
            conn.sendall(OK)

    server = serve(handler)
    pool = pool_for(server)
    for _ in range(3):
        resp = pool.request("POST", "/v1/x", headers={"X-Request-ID": "r1"}, body=b'{"a": 1}')
        assert resp.status == 200 and resp.headers["content-type"] == "application/json"
        assert resp.read() == b'{"ok": 1 }' and resp.complete
        resp.release()
    assert server.connections == 1, "one keep-alive connection for all requests"
    first = server.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"X-Request-ID: r1\r\n" in first and b"Content-Length: 8\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a": 1}')


def test_chunked_body_arrives_piece_by_piece(serve):
    gate = threading.Event()

    def handler(conn, index):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
        gate.wait(5)
        conn.sendall(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        server.read_request(conn)  # keep the connection open for reuse

    server = serve(handler)
    resp = pool_for(server).request("GET", "/stream")
    pieces = resp.chunks()
    assert next(pieces) == b"hello", "the first chunk is available before the second is sent"
    gate.set()
    assert list(pieces) == [b" world"] and resp.complete
    resp.release()


def test_close_delimited_body_and_connection_close(serve):
    def handler(conn, index):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        time.sleep(0.05)
        conn.sendall(b"part two")

    server = serve(handler)
    pool = pool_for(server)
    resp = pool.request("GET", "/")
    assert resp.read() == b"part one, part two"
    resp.release()
    resp = pool.request("GET", "/")
    resp.read()
    assert server.connections == 2, "a Connection: close answer is not reused"


def test_no_body_statuses(serve):
    def handler(conn, index):
        while server.read_request(conn) is not None:
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    server = serve(handler)
    pool = pool_for(server)
    for _ in range(2):
        resp = pool.request("DELETE", "/x")
        assert resp.status == 204 and resp.read() == b"" and resp.complete
        resp.release()
    assert server.connections == 1


def test_idle_connection_closed_by_the_node_is_retried_once(serve):
    def handler(conn, index):
        server.read_request(conn)
        conn.sendall(OK)
        # like uvicorn's keep-alive timeout: close the idle connection

    server = serve(handler)
    pool = pool_for(server)
    for _ in range(3):
        resp = pool.request("POST", "/x", body=b"{}")
        assert resp.read() == b'{"ok": 1 }'
        resp.release()
        time.sleep(0.05)
    assert server.connections == 3
    assert len(server.requests) == 3, "each request was sent to a live connection exactly once"


def test_failures_are_oserrors_of_the_right_kind(serve):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with pytest.raises(ConnectFailed) as refused:
        Pool("127.0.0.1", dead_port, host_header="x").request("GET", "/")
    assert not refused.value.timed_out

    def silent(conn, index):
        server.read_request(conn)
        time.sleep(2)

    server = serve(silent)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        pool_for(server).request("GET", "/", read_timeout=0.2)
    assert time.monotonic() - started < 1.5

    def hangup(conn, index):
        server.read_request(conn)

    server = serve(hangup)
    with pytest.raises(ProtocolError, match="without a response"):
        pool_for(server).request("GET", "/")

    def short_body(conn, index):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")

    server = serve(short_body)
    resp = pool_for(server).request("GET", "/")
    with pytest.raises(ProtocolError, match="short"):
        resp.read()
    resp.close()

    def broken_chunks(conn, index):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")

    server = serve(broken_chunks)
    resp = pool_for(server).request("GET", "/")
    with pytest.raises(ProtocolError, match="mid-response"):
        resp.read()

    def not_http(conn, index):
        server.read_request(conn)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    server = serve(not_http)
    with pytest.raises(ProtocolError, match="status line"):
        pool_for(server).request("GET", "/")


def test_header_injection_is_refused():
    pool = Pool("127.0.0.1", 9, host_header="x")
    with pytest.raises(ValueError, match="line break"):
        pool.request("GET", "/", headers={"X-Request-ID": "a\r\nEvil: 1"})


def test_pool_size_and_close(serve):
    def handler(conn, index):
        while server.read_request(conn) is not None:
            conn.sendall(OK)

    server = serve(handler)
    pool = pool_for(server, maxsize=1)
    a = pool.request("GET", "/")
    b = pool.request("GET", "/")
    a.read()
    b.read()
    a.release()
    b.release()  # the pool is full: this connection is closed
    assert server.connections == 2 and len(pool._idle) == 1
    pool.close()
    assert pool._idle == []
    resp = pool.request("GET", "/")
    resp.read()
    resp.release()  # a closed pool keeps nothing
    assert pool._idle == []


def test_path_and_method_with_line_breaks_are_refused():
    pool = Pool("127.0.0.1", 9, host_header="x")
    with pytest.raises(ValueError, match="line break"):
        pool.request("GET", "/v1/x HTTP/1.1\r\nEvil: 1\r\n\r\nGET /")
    with pytest.raises(ValueError, match="line break"):
        pool.request("GET\r\n", "/")


def test_chunk_extensions_and_trailers_then_reuse(serve):
    def handler(conn, index):
        while server.read_request(conn) is not None:
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'3;name=value;other="quoted"\r\nabc\r\n'
                b"A\r\n0123456789\r\n"
                b"0;last\r\nX-Checksum: 1\r\nX-More: 2\r\n\r\n"
            )

    server = serve(handler)
    pool = pool_for(server)
    for _ in range(2):
        resp = pool.request("GET", "/")
        assert resp.chunked and list(resp.chunks()) == [b"abc", b"0123456789"]
        assert resp.complete and "x-checksum" not in resp.headers, "trailers are not headers"
        resp.release()
    assert server.connections == 1


def test_response_split_into_one_byte_sends(serve):
    def handler(conn, index):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while server.read_request(conn) is not None:
            for i in range(len(RESPONSE)):
                conn.sendall(RESPONSE[i : i + 1])
                if i % 7 == 0:
                    time.sleep(0.001)  # let the client see the pieces separately

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nX-Multi: a\r\nX-Multi: b\r\nX-Space:   padded  \r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;e=1\r\n, world\r\n0\r\nT: 1\r\n\r\n"
    )
    server = serve(handler)
    pool = pool_for(server)
    for _ in range(2):
        resp = pool.request("GET", "/")
        assert resp.status == 200
        assert resp.headers["x-multi"] == "a, b" and resp.headers["x-space"] == "padded"
        assert resp.read() == b"hello, world" and resp.complete
        resp.release()
    assert server.connections == 1


def test_interim_responses_are_skipped(serve):
    def handler(conn, index):
        while server.read_request(conn) is not None:
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
            conn.sendall(OK)

    server = serve(handler)
    pool = pool_for(server)
    for _ in range(2):
        resp = pool.request("POST", "/x", body=b"{}")
        assert resp.status == 200 and "link" not in resp.headers
        assert resp.read() == b'{"ok": 1 }'
        resp.release()
    assert server.connections == 1


def test_head_and_304_have_no_body_even_with_a_content_length(serve):
    def handler(conn, index):
        while (head := server.read_request(conn)) is not None:
            if head.startswith(b"HEAD "):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n")

    server = serve(handler)
    pool = pool_for(server)
    for method in ("HEAD", "GET", "HEAD"):
        resp = pool.request(method, "/", read_timeout=2)
        assert resp.read() == b"" and resp.complete
        resp.release()
    assert server.connections == 1


def test_connection_not_reused_after_http10_or_extra_bytes(serve):
    answers = [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE",
        OK,
    ]

    def handler(conn, index):
        while server.read_request(conn) is not None:
            conn.sendall(answers[min(index, 2)])

    server = serve(handler)
    pool = pool_for(server)
    for _ in range(3):
        resp = pool.request("GET", "/")
        assert resp.status == 200 and resp.read() in (b"ok", b'{"ok": 1 }')
        resp.release()
    assert server.connections == 3
    assert len(pool._idle) == 1, "only the clean HTTP/1.1 answer was kept"


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nBad Header: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=[
        "space-in-name",
        "two-lengths",
        "length-and-chunked",
        "bad-length",
        "bare-lf",
        "bad-status",
        "upgrade",
    ],
)
def test_malformed_heads_are_protocol_errors(serve, answer):
    def handler(conn, index):
        server.read_request(conn)
        conn.sendall(answer)
        time.sleep(1)

    server = serve(handler)
    with pytest.raises(ProtocolError):
        pool_for(server).request("GET", "/", read_timeout=2)


def test_malformed_chunk_framing_is_a_protocol_error(serve):
    def handler(conn, index):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
        time.sleep(1)

    server = serve(handler)
    resp = pool_for(server).request("GET", "/", read_timeout=2)
    pieces = resp.chunks()
    assert next(pieces) == b"abc"
    with pytest.raises(ProtocolError, match="malformed"):
        next(pieces)
    resp.close()


def test_oversized_head_is_refused(serve):
    def handler(conn, index):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(OSError):
            for _ in range(100):
                conn.sendall(b"X-Filler: " + b"f" * 1000 + b"\r\n")

    server = serve(handler)
    with pytest.raises(ProtocolError, match="64 KiB"):
        pool_for(server).request("GET", "/", read_timeout=2)


def test_the_deadline_bounds_a_dripping_head_and_body(serve):
    """A per-read timeout restarts with every byte; the deadline does not."""
    stop = threading.Event()

    def handler(conn, index):
        server.read_request(conn)
        if index == 1:  # the head at once, then the body one byte per 0.2 s
            conn.sendall(OK[: OK.index(b"\r\n\r\n") + 4])
        for byte in OK if index == 0 else b'{"ok": 1 }':
            if stop.wait(0.2):
                return
            conn.sendall(bytes([byte]))

    server = serve(handler)
    pool = pool_for(server)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            pool.request("GET", "/", read_timeout=5, deadline=time.monotonic() + 0.6)
        assert time.monotonic() - started < 2
        started = time.monotonic()
        resp = pool.request("GET", "/", read_timeout=5, deadline=time.monotonic() + 0.6)
        with pytest.raises(TimeoutError):
            resp.read()
        assert time.monotonic() - started < 2
        resp.close()
    finally:
        stop.set()
