"""The router's gunicorn workers: gevent/gthread plus the guards of :mod:`.httpguard`.

gunicorn offers no hook for a per-connection read deadline, a per-address
connection cap or the body of its own error responses, so these are small
subclasses of its workers rather than settings:

- ``handle_error`` answers what the HTTP parser rejects with OpenAI-shaped
  JSON (400/408/414/431...) instead of gunicorn's HTML page;
- every accepted socket is wrapped in a :class:`~.httpguard.GuardedSocket`
  (header and body deadlines), connections are counted per client address
  and listener (over the cap: 429 and close), and a connection whose request
  body was broken is closed once the answer is sent.

Both worker classes get all of it; the hooks differ (gevent: ``handle``, one
greenlet per connection; gthread: ``accept``, where gunicorn makes its
connection object).

:func:`worker_class` builds the class with the configured limits as class
attributes in the master, so every forked worker (``workers > 1`` too)
inherits them; each worker counts its own connections.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from .httpguard import (
    CONTROL,
    DATA,
    ConnectionLimiter,
    GuardedSocket,
    GuardSettings,
    HttpError,
    error_for,
    send_error,
)

log = logging.getLogger("spotrelay.router")

REFUSAL_LOG_INTERVAL_S = 10.0


class JsonErrorsMixin:
    """gunicorn's ``handle_error`` with JSON bodies and no 5xx for a client's mistake."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        peer = addr[0] if isinstance(addr, tuple) and addr else "-"
        err = error_for(exc)
        if err is None:
            log.error("error handling a request from %s", peer, exc_info=exc)
            err = HttpError(500, "internal_error", "internal router error")
        else:
            log.warning("refused a request from %s: %d %s", peer, err.status, err.message)
        send_error(client, err)


class GuardMixin(JsonErrorsMixin):
    """What both worker classes share: the limits, the per-address counts, refusals."""

    guard: GuardSettings = GuardSettings()
    limiter: ConnectionLimiter | None = None

    def init_process(self) -> None:
        self.limiter = ConnectionLimiter(
            self.guard.max_connections_per_ip, self.guard.exempt_networks
        )
        self._refusals: dict[str, float] = {}
        super().init_process()  # type: ignore[misc]  # runs the worker; returns at exit

    def _plane(self, listener: Any) -> str:
        port = self.guard.control_port
        if not port:
            return DATA
        try:
            return CONTROL if listener.getsockname()[1] == port else DATA
        except (OSError, IndexError, TypeError):
            return DATA

    def _admit(self, listener: Any, client: Any, addr: Any) -> tuple[str, str] | None:
        """The connection's listener plane and peer address; None once refused (over the cap).

        An admitted connection holds one of its peer's slots until ``_release``.
        """
        plane = self._plane(listener)
        peer = addr[0] if isinstance(addr, tuple) and addr else ""
        if self.limiter is not None and not self.limiter.acquire(plane, peer):
            self._refuse(client, plane, peer)
            return None
        return plane, peer

    def _release(self, plane: str, peer: str) -> None:
        if self.limiter is not None:
            self.limiter.release(plane, peer)

    def _refuse(self, client: Any, plane: str, peer: str) -> None:
        cap = self.guard.max_connections_per_ip
        send_error(
            client,
            HttpError(
                429,
                "too_many_connections",
                f"more than {cap} open connections from {peer}; close some and retry",
            ),
        )
        with contextlib.suppress(OSError):
            client.close()
        now = time.monotonic()
        if now - self._refusals.get(peer, -1e9) >= REFUSAL_LOG_INTERVAL_S:
            self._refusals[peer] = now
            if len(self._refusals) > 10_000:
                self._refusals.clear()
            log.warning(
                "refusing connections from %s on the %s listener: %d open "
                "(server.max_connections_per_ip)",
                peer,
                plane,
                cap,
            )


class GuardedGeventMixin(GuardMixin):
    """Deadlines, per-address caps and forced closes for the gevent worker."""

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        admitted = self._admit(listener, client, addr)
        if admitted is None:
            return
        plane, peer = admitted
        try:
            super().handle(listener, GuardedSocket(client, self.guard, plane), addr)  # type: ignore[misc]
        finally:
            self._release(plane, peer)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        if not isinstance(sock, GuardedSocket):
            return super().handle_request(listener_name, req, sock, addr)  # type: ignore[misc]
        sock.start_body()
        try:
            result = super().handle_request(listener_name, req, sock, addr)  # type: ignore[misc]
        finally:
            sock.start_idle()
        if sock.close_after_response:
            raise StopIteration("request body was malformed or incomplete")
        return result


class GuardedThreadMixin(GuardMixin):
    """The same guards for the gthread worker: wrapped sockets, caps at accept.

    A slow client still holds one of ``server.threads`` while its deadline
    runs (a thread blocks in its read), so gevent stays the better choice
    when hostile clients can reach the router directly.
    """

    def accept(self, listener: Any) -> None:
        """gunicorn's ``ThreadWorker.accept`` with the cap and the wrapped socket."""
        import errno

        from gunicorn.workers.gthread import TConn

        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        admitted = self._admit(listener, client_sock, client_addr)
        if admitted is None:
            return
        plane, peer = admitted
        self.nr_conns += 1  # type: ignore[attr-defined]
        client_sock.setblocking(True)
        release = (lambda: self._release(plane, peer)) if self.limiter is not None else None
        sock = GuardedSocket(client_sock, self.guard, plane, on_close=release)
        conn = TConn(self.cfg, sock, client_addr, listener.getsockname())  # type: ignore[attr-defined,arg-type]
        self.enqueue_req(conn)  # type: ignore[attr-defined]

    def handle_request(self, req: Any, conn: Any) -> Any:
        sock = conn.sock
        if not isinstance(sock, GuardedSocket):
            return super().handle_request(req, conn)  # type: ignore[misc]
        sock.start_body()
        try:
            keep_alive = super().handle_request(req, conn)  # type: ignore[misc]
        finally:
            sock.start_idle()
        return keep_alive and not sock.close_after_response


def worker_class(kind: str, guard: GuardSettings) -> type:
    """The gunicorn worker class for ``server.worker_class``, carrying ``guard``."""
    if kind == "gevent":
        from gunicorn.workers.ggevent import GeventWorker

        return type("SpotrelayGeventWorker", (GuardedGeventMixin, GeventWorker), {"guard": guard})
    from gunicorn.workers.gthread import ThreadWorker

    return type("SpotrelayThreadWorker", (GuardedThreadMixin, ThreadWorker), {"guard": guard})
