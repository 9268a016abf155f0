"""What the router's HTTP server does about slow, greedy or malformed clients.

gunicorn parses requests, but leaves three things open that a client without
any credential can use against the router:

- **slow clients**: a connection that sends its headers (or body) one byte a
  second holds a connection slot for as long as it likes. :class:`GuardedSocket`
  wraps each accepted socket and enforces a deadline on the request head
  (``server.header_timeout_s``, counted from the first byte of a request, or
  from the accept for a connection's first request) and on the body
  (``server.body_timeout_s``, counted from the end of the head);
- **many connections from one address**: :class:`ConnectionLimiter` caps open
  connections per client address and listener (``server.max_connections_per_ip``),
  except for ``server.connection_cap_exempt`` networks; behind
  ``server.trusted_proxies`` the client is the one ``X-Forwarded-For`` names
  (:mod:`.clientaddr`) and its requests in progress are what is counted;
- **idle connections**: each socket knows when it went idle, so the worker
  can close idle ones early when the listener fills up (:mod:`.overload`);
- **HTML errors**: what gunicorn's parser rejects (bad request line, too many
  or too large headers, bad chunk framing...) is answered by
  :func:`error_for` / :func:`error_response` in OpenAI's JSON error shape with
  a 4xx status, never gunicorn's HTML page and never a 5xx.

This module imports neither gevent nor gunicorn's workers, so the Flask app
and the tests can use it; :mod:`spotrelay.router.transport.worker` plugs it into gunicorn.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from spotrelay.core.errors import openai_error

from .clientaddr import Networks
from .sendall import send_all

IDLE, HEAD, BODY = "idle", "head", "body"
DATA, CONTROL = "data", "control"
CLOSE_AFTER_RESPONSE = "spotrelay.close_after_response"


class ClientTimeout(Exception):
    """The client did not send its request head (or body) in time.

    Not an ``OSError``: gunicorn logs those as socket errors with a traceback;
    this one is answered 408 like any other bad request.
    """

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"request {phase} not received within {seconds:g}s")
        self.phase = phase


@dataclass(frozen=True)
class GuardSettings:
    """The server.* limits, as the worker needs them (picklable, set before fork)."""

    header_timeout_s: float = 20.0
    body_timeout_s: float = 120.0
    max_connections_per_ip: int = 1000
    exempt_networks: tuple[str, ...] = ()
    control_port: int = 0
    trusted_proxies: tuple[str, ...] = ()
    keepalive_s: float = 75.0
    keepalive_min_s: float = 1.0
    overload_start: float = 0.5  # fraction of worker_connections
    overload_saturation: float = 0.9


class GuardedSocket:
    """An accepted client socket whose reads are bounded by the request phase's deadline.

    Phases: ``head`` (reading a request line and headers: deadline
    ``header_timeout_s``), ``body`` (the application reads the body:
    ``body_timeout_s`` from the end of the head), ``idle`` (between requests
    on a keep-alive connection: gunicorn's keep-alive timeout applies; the
    first byte of the next request starts a new ``head`` deadline).
    Everything else is delegated to the wrapped socket.
    """

    def __init__(
        self,
        sock: Any,
        settings: GuardSettings,
        plane: str = DATA,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.raw = sock
        self.plane = plane
        self.settings = settings
        self.clock = clock
        self.phase = HEAD
        self.limit_s = settings.header_timeout_s
        self.deadline: float | None = clock() + settings.header_timeout_s
        self.close_after_response = False
        self._closing = False
        self._on_close = on_close
        # Idle: nothing of a request received yet (since the accept, or the last answer).
        self.waiting = True
        self.idle_since = clock()
        self.trusted_peer = False  # a trusted proxy: the client is in X-Forwarded-For
        self._reaped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)

    def shutdown(self, how: int) -> None:
        """Closing (gunicorn drains what is left to read): no deadlines any more."""
        self._closing, self.deadline = True, None
        self.raw.shutdown(how)

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        try:
            self.raw.close()
        finally:
            if on_close is not None:
                on_close()

    def start_body(self) -> None:
        """The head is parsed: from now on the body deadline applies."""
        self.waiting = False
        self.phase, self.limit_s = BODY, self.settings.body_timeout_s
        self.deadline = self.clock() + self.limit_s

    def start_idle(self) -> None:
        """The response is sent: wait for the next request (keep-alive timeout)."""
        self.phase, self.deadline = IDLE, None
        self.waiting, self.idle_since = True, self.clock()

    def close_idle(self) -> bool:
        """Under pressure: end this connection if it is still idle; the blocked read sees EOF.

        The operating system's socket is shut down, not gevent's wrapper: the
        wrapper would cancel the waiting read with an error gunicorn logs as a
        traceback, once per connection.
        """
        if not self.waiting or self._closing:
            return False
        self._reaped = True
        with contextlib.suppress(OSError):
            getattr(self.raw, "_sock", self.raw).shutdown(socket.SHUT_RDWR)
        return True

    def recv(self, size: int, *flags: int) -> bytes:
        if self._closing:
            return self.raw.recv(size, *flags)
        if self._reaped:  # closed for being idle: an ordinary end of the connection
            with contextlib.suppress(OSError):
                return self.raw.recv(size, *flags)
            return b""
        if self.deadline is None:
            self.raw.settimeout(None)
            data = self.raw.recv(size, *flags)
        else:
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                raise ClientTimeout(self.phase, self.limit_s)
            self.raw.settimeout(remaining)
            try:
                data = self.raw.recv(size, *flags)
            except TimeoutError:
                raise ClientTimeout(self.phase, self.limit_s) from None
            finally:
                self.raw.settimeout(None)  # writes (the response) stay blocking, as before
        if data:
            self.waiting = False
            if self.phase == IDLE:
                self.phase, self.limit_s = HEAD, self.settings.header_timeout_s
                self.deadline = self.clock() + self.limit_s
        return data

    def sendall(self, data: bytes) -> None:
        """Every write of a response (each stream event): see :mod:`.sendall`. Writes
        have no timeout (:meth:`recv` clears it after each read); gunicorn writes bytes."""
        send_all(self.raw, data)

    def recv_into(self, buffer: Any, nbytes: int = 0, *flags: int) -> int:
        data = self.recv(nbytes or len(buffer), *flags)
        buffer[: len(data)] = data
        return len(data)


class ConnectionLimiter:
    """Open connections per (listener, client address), capped; thread- and greenlet-safe."""

    def __init__(self, cap: int, exempt: Iterable[str] = ()) -> None:
        self.cap = cap
        self.exempt = Networks(exempt)
        self._open: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _exempt(self, address: str) -> bool:
        return bool(self.exempt) and address in self.exempt

    def acquire(self, plane: str, address: str) -> bool:
        """Count a new connection; False (and not counted) when the address is at its cap."""
        if self.cap <= 0 or self._exempt(address):
            return True
        key = (plane, address)
        with self._lock:
            count = self._open.get(key, 0)
            if count >= self.cap:
                return False
            self._open[key] = count + 1
        return True

    def release(self, plane: str, address: str) -> None:
        if self.cap <= 0 or self._exempt(address):
            return
        key = (plane, address)
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
            else:
                self._open.pop(key, None)

    def open_count(self, plane: str, address: str) -> int:
        return self._open.get((plane, address), 0)


@dataclass(frozen=True)
class HttpError:
    """A status, an OpenAI error ``code`` and a message for the client."""

    status: int
    code: str
    message: str


REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


def error_for(exc: BaseException) -> HttpError | None:
    """The client error for an exception gunicorn raised while parsing, or None if not one.

    Matched by class name so this module does not import gunicorn; the names
    are gunicorn's ``gunicorn.http.errors`` classes.
    """
    if isinstance(exc, ClientTimeout):
        return HttpError(408, "request_timeout", str(exc))
    names = {cls.__name__ for cls in type(exc).__mro__}
    detail = _clip(str(exc))
    if "LimitRequestLine" in names:
        return HttpError(414, "request_line_too_long", f"request line too long: {detail}")
    if "LimitRequestHeaders" in names:
        return HttpError(431, "headers_too_large", f"request headers too large: {detail}")
    if "ExpectationFailed" in names:
        return HttpError(417, "expectation_failed", f"unsupported Expect header: {detail}")
    if "ForbiddenProxyRequest" in names:
        return HttpError(403, "forbidden", "proxy protocol not allowed from this address")
    if "ParseException" in names or "SSLError" in names:
        return HttpError(400, "invalid_request", f"malformed HTTP request: {detail}")
    return None


def error_response(err: HttpError) -> bytes:
    """A complete HTTP/1.1 response for ``err`` that closes the connection."""
    body = json.dumps(openai_error(err.status, err.message, code=err.code)).encode()
    reason = REASONS.get(err.status, "Error")
    head = (
        f"HTTP/1.1 {err.status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def send_error(sock: Any, err: HttpError) -> None:
    """Best effort: the client may already be gone."""
    raw = getattr(sock, "raw", sock)
    try:
        raw.settimeout(1.0)
        raw.sendall(error_response(err))
    except OSError:
        pass


def plane_of(environ: dict[str, Any], control_port: int) -> str:
    """Which listener a request came in on: ``control`` or ``data``."""
    sock = environ.get("gunicorn.socket")
    plane = getattr(sock, "plane", None)
    if plane is not None:
        return plane
    if sock is not None and control_port:
        try:
            if sock.getsockname()[1] == control_port:
                return CONTROL
        except (OSError, IndexError, TypeError):
            pass
    return DATA


def close_after_response(environ: dict[str, Any]) -> None:
    """The request's connection is in an unknown state (bad body): close it after answering."""
    environ[CLOSE_AFTER_RESPONSE] = True
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, GuardedSocket):
        sock.close_after_response = True


def client_gone(sock: Any) -> bool:
    """Has the client closed its side of ``sock``? Never blocks."""
    return clients_gone([sock])[0]


_WATCH_EVENTS = select.POLLIN | select.POLLPRI | getattr(select, "POLLRDHUP", 0)
_HANGUP = select.POLLERR | select.POLLNVAL | select.POLLHUP | getattr(select, "POLLRDHUP", 0)


def clients_gone(socks: list[Any]) -> list[bool]:
    """For each client socket, has the client left? One ``poll`` call for all of them.

    Readable with nothing to read is an orderly close (FIN); a reset or a
    hang-up is gone too. Readable with data (a pipelined request) is not a
    disconnect. Something that is not a socket (a test double) never is.
    """
    gone = [False] * len(socks)
    raws: dict[int, tuple[int, Any]] = {}
    poller = _poll()
    for i, sock in enumerate(socks):
        raw = getattr(sock, "raw", sock)
        if not hasattr(raw, "fileno"):
            continue
        try:
            fd = raw.fileno()
        except OSError:
            fd = -1
        if fd < 0:
            gone[i] = True
            continue
        raws[fd] = (i, raw)
        poller.register(fd, _WATCH_EVENTS)
    if not raws:
        return gone
    try:
        events = poller.poll(0)
    except OSError:
        return gone
    for fd, mask in events:
        i, raw = raws[fd]
        if mask & _HANGUP:
            gone[i] = True
            continue
        try:
            gone[i] = raw.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            pass
        except OSError:
            gone[i] = True
    return gone


def _poll() -> Any:
    """The operating system's poll (gevent's cooperative one would yield, even at timeout 0)."""
    try:
        from gevent import monkey

        return monkey.get_original("select", "poll")()
    except ImportError:
        return select.poll()


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
