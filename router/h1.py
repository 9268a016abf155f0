"""A small HTTP/1.1 client for the router's connections to nodes.

Why not urllib3 (which DESIGN.md's prototype used)? Measured on this
project's 2-core machine under gevent, one urllib3 ``urlopen`` + ``read``
costs about 400 µs of CPU per proxied request (``http.client`` header parsing
through the ``email`` package, a liveness ``poll`` before each reuse, a gevent
timer per wait, several wrapper objects); this client costs about 100 µs for
the same exchange, which is most of the difference between ~1,200 and ~2,000
requests/s through one router process (``bench/router_bench.py``,
docs/benchmarks.md). The router only ever talks to one kind of peer — vLLM's
OpenAI server (uvicorn) or the simulator — with small requests and either a
``Content-Length`` or a chunked body, so the protocol subset needed is small:

- one request per connection at a time, keep-alive reuse from a LIFO pool;
- response head up to 64 KiB; body by ``Content-Length``, ``chunked`` (with
  trailers) or until close; no 1xx except skipping ``100 Continue``;
- a reused connection that fails before any response byte (the node closed
  it while idle: uvicorn does after 5 s) is retried once on a fresh one;
- every error is an ``OSError`` subclass; :class:`ConnectFailed` means
  nothing was sent (safe to retry anywhere), ``TimeoutError`` a timeout while
  waiting for the node, anything else a broken exchange.

Sockets are the standard library's, so gevent's monkey patching makes every
wait cooperative.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator, Mapping

MAX_HEAD = 64 * 1024
MAX_LINE = 8 * 1024
RECV_SIZE = 65536
NO_BODY_STATUS = frozenset({204, 304})


class ConnectFailed(ConnectionError):
    """The TCP (or TLS) connection could not be made: nothing reached the node."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ProtocolError(ConnectionError):
    """The node broke the exchange: closed early, or sent something that is not HTTP/1.1."""


class _Connection:
    __slots__ = ("buf", "reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Response:
    """A response whose body has not been read yet; read it, then ``release`` or ``close``."""

    def __init__(
        self,
        pool: Pool | None,
        conn: _Connection,
        status: int,
        headers: dict[str, str],
        *,
        keep_alive: bool,
        no_body: bool,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status = status
        self.headers = headers  # names lower-cased
        self._keep_alive = keep_alive
        te = headers.get("transfer-encoding", "").lower()
        self.chunked = "chunked" in te
        length = headers.get("content-length")
        self._length: int | None = None
        if no_body:
            self._length = 0
        elif not self.chunked and length is not None:
            try:
                self._length = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length!r}") from None
        self.complete = self._length == 0  # the whole body was read

    # -- reading ------------------------------------------------------------------------

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """Body bytes as they arrive (chunked framing removed)."""
        if self.complete:
            return
        if self.chunked:
            yield from self._chunked()
        elif self._length is not None:
            yield from self._sized(self._length)
        else:
            yield from self._until_close()

    def _conn_or_fail(self) -> _Connection:
        if self._conn is None:
            raise ProtocolError("response already closed")
        return self._conn

    def _fill(self, conn: _Connection) -> None:
        data = conn.sock.recv(RECV_SIZE)
        if not data:
            raise ProtocolError("the node closed the connection mid-response")
        conn.buf += data

    def _sized(self, length: int) -> Iterator[bytes]:
        conn = self._conn_or_fail()
        remaining = length
        if conn.buf:
            take = bytes(conn.buf[:remaining])
            del conn.buf[: len(take)]
            remaining -= len(take)
            if take:
                yield take
        while remaining > 0:
            data = conn.sock.recv(min(RECV_SIZE, remaining))
            if not data:
                raise ProtocolError(f"body ended {remaining} bytes short")
            remaining -= len(data)
            yield data
        self.complete = True

    def _until_close(self) -> Iterator[bytes]:
        conn = self._conn_or_fail()
        self._keep_alive = False
        if conn.buf:
            data = bytes(conn.buf)
            conn.buf.clear()
            yield data
        while True:
            data = conn.sock.recv(RECV_SIZE)
            if not data:
                break
            yield data
        self.complete = True

    def _line(self, conn: _Connection) -> bytes:
        buf = conn.buf
        while True:
            end = buf.find(b"\r\n")
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 2]
                return line
            if len(buf) > MAX_LINE:
                raise ProtocolError("chunk header line too long")
            self._fill(conn)

    def _chunked(self) -> Iterator[bytes]:
        conn = self._conn_or_fail()
        buf = conn.buf
        while True:
            line = self._line(conn)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
            if size == 0:
                while self._line(conn):  # trailers, then the empty line
                    pass
                self.complete = True
                return
            while len(buf) < size + 2:
                self._fill(conn)
            if buf[size : size + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            data = bytes(buf[:size])
            del buf[: size + 2]
            yield data

    # -- finishing ------------------------------------------------------------------------

    def set_timeout(self, seconds: float | None) -> None:
        if self._conn is not None:
            self._conn.sock.settimeout(seconds)

    def interrupt(self) -> None:
        """Make a read blocked on this response (in another thread or greenlet) fail now."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)

    def release(self) -> None:
        """Back to the pool when the body was read completely and the node keeps it alive."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.complete and self._keep_alive and not conn.buf and self._pool is not None:
            self._pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection (the node sees the request aborted if it is still running)."""
        conn, self._conn = self._conn, None
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
    ) -> Response:
        """Send a request and read the response head; the body is read from the result."""
        head = self._head(method, path, headers or {}, body)
        while True:
            conn = self._get(connect_timeout)
            try:
                conn.sock.settimeout(read_timeout)
                try:
                    conn.sock.sendall(head + body if body else head)
                except (ConnectionResetError, BrokenPipeError):
                    if not conn.reused:
                        raise
                    raise _StaleConnection from None
                return self._read_head(conn)
            except _StaleConnection:
                conn.close()  # idle close by the node: try once more on a fresh connection
                continue
            except BaseException:
                conn.close()
                raise

    def close(self) -> None:
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- internals ------------------------------------------------------------------------

    def _head(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> bytes:
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
            sock = socket.create_connection((self.address, self.port), timeout=timeout)
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

    def _read_head(self, conn: _Connection) -> Response:
        buf = conn.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ProtocolError("response head larger than 64 KiB")
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except (ConnectionResetError, BrokenPipeError):
                    if conn.reused and not buf:
                        raise _StaleConnection from None
                    raise
                if not data:
                    if conn.reused and not buf:
                        raise _StaleConnection
                    raise ProtocolError("the node closed the connection without a response")
                buf += data
                continue
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
            status = int(code)
            if status == 100:
                continue  # 100 Continue: the real response follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ProtocolError(f"malformed header line {line[:60]!r}")
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            connection = headers.get("connection", "").lower()
            keep_alive = version == "HTTP/1.1" and "close" not in connection
            return Response(
                self,
                conn,
                status,
                headers,
                keep_alive=keep_alive,
                no_body=status in NO_BODY_STATUS,
            )


class _StaleConnection(Exception):
    """A reused keep-alive connection the node had already closed."""
