"""A small HTTP/1.1 client for the router's connections to nodes.

Why not urllib3 (which the first version used)? Measured on this project's
2-core machine under gevent, one urllib3 ``urlopen`` + ``read`` costs about
400 µs of CPU per proxied request (``http.client`` header parsing through the
``email`` package, a liveness ``poll`` before each reuse, a gevent timer per
wait, several wrapper objects); this client costs about 100 µs for the same
exchange: 1,206 → 1,578 non-streaming requests/s through one router process
(``bench/router_bench.py``; the later steps to ~2,000 are in
docs/benchmarks.md). So the connection handling is our own and small, but
response parsing is not: it is ``httptools`` (MagicStack's binding of llhttp,
the parser of Node.js and of uvicorn), fed the bytes as they arrive from the
socket, its callbacks collecting the head and handing body chunks straight
to the reader. That keeps the risky part (status line, header syntax,
``Content-Length`` vs ``Transfer-Encoding``, chunked framing with extensions
and trailers) in a maintained, fuzzed parser, at no extra CPU.

What this module adds around the parser:

- one request per connection at a time, keep-alive reuse from a LIFO pool
  (a connection goes back only when its response was read completely, the
  node keeps it alive and sent nothing after the response);
- response head up to 64 KiB (``MAX_HEAD``), and no more than that of chunk
  framing or trailers without body data; interim ``1xx`` responses
  (``100 Continue``, ``103 Early Hints``) are skipped, ``101`` is an error;
- a body by ``Content-Length``, ``chunked`` or until close; none for
  ``HEAD``, ``204`` and ``304``; body chunks are yielded as the parser
  delivers them, never buffered whole (streams relay event by event);
- an optional overall deadline (``deadline``, a ``time.monotonic()`` value)
  bounds the head and the body together: every wait is shortened to what is
  left of it, so a node dripping one byte per second cannot stretch an
  exchange past it (a per-read timeout alone restarts with every byte);
- a reused connection that fails before any response byte (the node closed
  it while idle: uvicorn does after 5 s) is retried once on a fresh one;
- every error is an ``OSError`` subclass; :class:`ConnectFailed` means
  nothing was sent (safe to retry anywhere), ``TimeoutError`` a timeout while
  waiting for the node, :class:`ProtocolError` (also for whatever the parser
  rejects) or another ``OSError`` a broken exchange.

The request head is written here (it is a few lines), refusing line breaks
in the method, path and headers. Sockets are the standard library's, so
gevent's monkey patching makes every wait cooperative.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from time import monotonic

import httptools

from .sendall import send_all

MAX_HEAD = 64 * 1024
RECV_SIZE = 65536
_JOIN_MAX = 64 * 1024  # bodies up to this size go out in one send with the head


class ConnectFailed(ConnectionError):
    """The TCP (or TLS) connection could not be made: nothing reached the node."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ProtocolError(ConnectionError):
    """The node broke the exchange: closed early, or sent something that is not HTTP/1.1."""


class _Connection:
    __slots__ = ("reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Response:
    """A response whose body has not been read yet; read it, then ``release`` or ``close``.

    It is also the ``httptools`` parser's protocol object: the ``on_*``
    methods are the parser's callbacks, not for callers.
    """

    __slots__ = (
        "_conn",
        "_dirty",
        "_error",
        "_head_done",
        "_interim",
        "_keep_alive",
        "_no_body",
        "_parser",
        "_pending",
        "_pool",
        "_timeout",
        "_until_close",
        "chunked",
        "complete",
        "deadline",
        "headers",
        "status",
    )

    def __init__(self, pool: Pool | None, conn: _Connection, *, head_request: bool = False):
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = 0
        self.headers: dict[str, str] = {}  # names lower-cased
        self.chunked = False
        self.complete = False  # the whole body was read from the socket
        self._keep_alive = False
        self._no_body = head_request
        self._head_done = False
        self._interim = False  # parsing a 1xx response, to be skipped
        self._until_close = False
        self._dirty = False  # the node sent bytes after the response: never reuse
        self._error: ProtocolError | None = None  # found with the head, raised after the body
        self._pending: list[bytes] = []  # body chunks parsed but not yet yielded
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._timeout: float | None = None  # the socket's per-wait timeout
        self.deadline: float | None = None  # monotonic time the exchange must end by

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._head_done:
            self._dirty = True  # a second response nobody asked for
        else:
            self.headers = {}  # after a skipped 1xx

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # trailers: not used
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            self._interim = True  # 100 Continue, 103 Early Hints: the real response follows
            return
        self.status = status
        self._head_done = True
        headers = self.headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if self._no_body:  # HEAD: llhttp cannot be told, so the parser is left behind
            self.complete = True
            self._keep_alive = parser.should_keep_alive()
        else:
            self._until_close = (
                not self.chunked and "content-length" not in headers and status not in (204, 304)
            )

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self._dirty = True  # body bytes after a HEAD response
        else:
            self._pending.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self.complete:
            self.complete = True
            self._keep_alive = self._parser.should_keep_alive()  # type: ignore[union-attr]

    # -- reading ------------------------------------------------------------------------

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """Body bytes as they arrive (chunked framing removed)."""
        framing = 0  # bytes received without body data (chunk headers, trailers)
        while True:
            if self._pending:
                batch, self._pending = self._pending, []
                yield from batch
                framing = 0
            if self.complete:
                self._parser = None  # done with it (and no reference cycle left behind)
                return
            if self._error is not None:
                raise self._error
            conn = self._conn
            if conn is None:
                raise ProtocolError("response already closed")
            if self.deadline is not None:
                self._arm(conn.sock)
            data = conn.sock.recv(RECV_SIZE)
            if not data:
                self._end_of_stream()
                continue
            try:
                self._feed(data)
            except ProtocolError:
                batch, self._pending = self._pending, []
                yield from batch  # what parsed before the error still goes out first
                raise
            if not self._pending:
                framing += len(data)
                if framing > MAX_HEAD:
                    raise ProtocolError("more than 64 KiB of chunk framing without data")

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            raise ProtocolError("response already closed")
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self.complete:  # not a 101 for us: llhttp read on into a second message
                self._dirty = True
                return
            raise ProtocolError("the node switched protocols (101): not supported") from None
        except httptools.HttpParserError as exc:
            if self.complete:
                self._dirty = True  # garbage after a whole response: just don't reuse
                return
            if not self._head_done and not parser.get_status_code():
                raise ProtocolError(
                    f"not an HTTP/1.x status line: {bytes(data[:60])!r} ({exc})"
                ) from None
            raise ProtocolError(f"malformed response from the node: {exc}") from None

    def _end_of_stream(self) -> None:
        if self._until_close:
            self.complete = True  # the close is the end of this body
            self._keep_alive = False
        elif self.chunked:
            raise ProtocolError("the node closed the connection mid-response")
        else:
            length = self.headers.get("content-length", "?")
            raise ProtocolError(f"body ended short of its Content-Length {length}")

    # -- finishing ------------------------------------------------------------------------

    def set_timeout(self, seconds: float | None) -> None:
        """The longest wait for one read (None: no limit); see also ``deadline``."""
        self._timeout = seconds
        if self._conn is not None:
            self._conn.sock.settimeout(seconds)

    def _arm(self, sock: socket.socket) -> None:
        """Shorten the next wait to what is left of the deadline (TimeoutError once past)."""
        assert self.deadline is not None
        left = self.deadline - monotonic()
        if left <= 0:
            raise TimeoutError("the node's answer did not complete within the request deadline")
        timeout = self._timeout
        sock.settimeout(left if timeout is None or left < timeout else timeout)

    def interrupt(self) -> None:
        """Make a read blocked on this response (in another thread or greenlet) fail now."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Back to the pool when the body was read completely and the node keeps it alive."""
        conn, self._conn = self._conn, None
        self._parser = None
        if conn is None:
            return
        if self.complete and self._keep_alive and not self._dirty and self._pool is not None:
            self._pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection (the node sees the request aborted if it is still running)."""
        conn, self._conn = self._conn, None
        self._parser = None
        if conn is not None:
            conn.close()


class Pool:
    """Keep-alive connections to one node."""

    def __init__(
        self,
        address: str,
        port: int,
        *,
        host_header: str,
        maxsize: int = 256,
        tls_server_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.host_header = host_header
        self.maxsize = maxsize
        self.tls_server_name = tls_server_name
        self.ssl_context = ssl_context
        self._idle: list[_Connection] = []
        self.closed = False

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        connect_timeout: float = 2.0,
        read_timeout: float | None = 60.0,
        on_connection: Callable[[socket.socket], None] | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send a request and read the response head; the body is read from the result.

        ``read_timeout`` bounds each wait for the node; ``deadline`` (monotonic)
        the head and the body as a whole (until ``Response.deadline`` is changed).

        ``on_connection`` gets the socket before anything is sent on it (again
        for a replacement connection): the caller may shut it down from
        another greenlet or thread to abort the exchange.
        """
        head = self._head(method, path, headers or {}, body)
        while True:
            conn = self._get(connect_timeout)
            resp = Response(self, conn, head_request=method == "HEAD")
            resp.deadline = deadline
            if on_connection is not None:
                on_connection(conn.sock)
            try:
                resp.set_timeout(read_timeout)
                try:
                    if len(body) > _JOIN_MAX:  # an upload: send it as is, never a copy
                        send_all(conn.sock, head)
                        send_all(conn.sock, body)
                    else:
                        send_all(conn.sock, head + body if body else head)
                except (ConnectionResetError, BrokenPipeError):
                    if not conn.reused:
                        raise
                    raise _StaleConnection from None
                self._read_head(resp, conn)
                return resp
            except _StaleConnection:
                resp.close()  # idle close by the node: try once more on a fresh connection
                continue
            except BaseException:
                resp.close()
                raise

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- internals ------------------------------------------------------------------------

    def _head(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
        for part in (method, path, self.host_header):
            if "\r" in part or "\n" in part or " " in part or not part:
                raise ValueError(
                    f"request line part {part[:60]!r} is empty or has a space or line break"
                )
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _get(self, connect_timeout: float) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            conn.reused = True
            return conn
        return self._connect(connect_timeout)

    def _put(self, conn: _Connection) -> None:
        if self.closed or len(self._idle) >= self.maxsize:
            conn.close()
        else:
            self._idle.append(conn)

    def _connect(self, timeout: float) -> _Connection:
        try:
            sock = _open_socket(self.address, self.port, timeout)
        except TimeoutError as exc:
            raise ConnectFailed(
                f"connect to {self.address}:{self.port} timed out", timed_out=True
            ) from exc
        except OSError as exc:
            raise ConnectFailed(f"connect to {self.address}:{self.port}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(
                    sock, server_hostname=self.tls_server_name or self.address
                )
        except TimeoutError as exc:
            sock.close()
            raise ConnectFailed(
                f"TLS handshake with {self.address} timed out", timed_out=True
            ) from exc
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"TLS handshake with {self.address}: {exc}") from exc
        return _Connection(sock)

    def _read_head(self, resp: Response, conn: _Connection) -> None:
        """Receive and parse until the final response's head is complete."""
        received = 0
        while not resp._head_done:
            if received > MAX_HEAD:
                raise ProtocolError("response head larger than 64 KiB")
            if resp.deadline is not None:
                resp._arm(conn.sock)
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (ConnectionResetError, BrokenPipeError):
                if conn.reused and not received:
                    raise _StaleConnection from None
                raise
            if not data:
                if conn.reused and not received:
                    raise _StaleConnection
                if received:
                    raise ProtocolError("the node closed the connection mid-way through the head")
                raise ProtocolError("the node closed the connection without a response")
            received += len(data)
            try:
                resp._feed(data)
            except ProtocolError as exc:
                if not resp._head_done:
                    raise
                resp._error = exc  # the body is broken: raised to its reader, after its good part


def _open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to an IP literal (the network policy resolved and vetted it).

    Not ``socket.create_connection``: it calls ``getaddrinfo`` even for an IP
    literal, and under gevent that runs in a thread pool (about 3 % of a
    streaming router's CPU, one call per new node connection).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _StaleConnection(Exception):
    """A reused keep-alive connection the node had already closed."""
