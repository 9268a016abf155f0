"""The router's gunicorn workers: gevent/gthread plus the guards of :mod:`.httpguard`.

gunicorn offers no hook for a per-connection read deadline, a per-address
connection cap or the body of its own error responses, so these are small
subclasses of its workers rather than settings:

- ``handle_error`` answers what the HTTP parser rejects with OpenAI-shaped
  JSON (400/408/414/431...) instead of gunicorn's HTML page;
- every accepted socket is wrapped in a :class:`~.httpguard.GuardedSocket`
  (header and body deadlines), connections are counted per client address
  and listener (over the cap: 429 and close; behind ``server.trusted_proxies``
  requests per forwarded client), and a connection whose request body was
  broken is closed once the answer is sent;
- idle connections give way as a listener fills (:mod:`.overload`): the
  gevent worker runs a reaper every 0.25 s, the gthread worker scales
  gunicorn's own keep-alive expiry.

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
from typing import Any

from .clientaddr import Networks, real_client
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
from .overload import IdlePolicy, IdleReaper, LogThrottle, held_note

log = logging.getLogger("spotrelay.router")

REFUSAL_LOG_INTERVAL_S = 10.0
REAP_INTERVAL_S = 0.25
# One per worker process (the master's copy is never used): refusals and reaped
# connections are logged at most once per key per interval, with a count.
THROTTLE = LogThrottle(REFUSAL_LOG_INTERVAL_S)


class JsonErrorsMixin:
    """gunicorn's ``handle_error`` with JSON bodies and no 5xx for a client's mistake."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        peer = addr[0] if isinstance(addr, tuple) and addr else "-"
        err = error_for(exc)
        if err is None:
            log.error("error handling a request from %s", peer, exc_info=exc)
            err = HttpError(500, "internal_error", "internal router error")
        elif (held := THROTTLE.admit(("refused", err.status))) is not None:
            note = held_note(held, REFUSAL_LOG_INTERVAL_S)
            log.warning("refused a request from %s: %d %s%s", peer, err.status, err.message, note)
        send_error(client, err)


class GuardMixin(JsonErrorsMixin):
    """What both worker classes share: the limits, the per-client counts, refusals."""

    guard: GuardSettings = GuardSettings()
    limiter: ConnectionLimiter | None = None

    def init_process(self) -> None:
        self.limiter = ConnectionLimiter(
            self.guard.max_connections_per_ip, self.guard.exempt_networks
        )
        self.trusted = Networks(self.guard.trusted_proxies)
        self.idle_policy = IdlePolicy(
            keepalive_s=self.guard.keepalive_s,
            keepalive_min_s=self.guard.keepalive_min_s,
            start=self.guard.overload_start,
            saturation=self.guard.overload_saturation,
        )
        super().init_process()  # type: ignore[misc]  # runs the worker; returns at exit

    def _plane(self, listener: Any) -> str:
        port = self.guard.control_port
        if not port:
            return DATA
        try:
            return CONTROL if listener.getsockname()[1] == port else DATA
        except (OSError, IndexError, TypeError):
            return DATA

    def _admit(self, listener: Any, client: Any, addr: Any) -> tuple[str, str, bool] | None:
        """The connection's plane, peer address and whether the peer is a trusted proxy;
        None once refused (over the cap).

        A direct client's connection holds one of its slots until ``_release``;
        a trusted proxy's is counted per request, against the client it names.
        """
        plane = self._plane(listener)
        peer = addr[0] if isinstance(addr, tuple) and addr else ""
        if self.trusted and peer in self.trusted:
            return plane, peer, True
        if self.limiter is not None and not self.limiter.acquire(plane, peer):
            self._refuse(client, plane, peer)
            return None
        return plane, peer, False

    def _release(self, plane: str, peer: str) -> None:
        if self.limiter is not None:
            self.limiter.release(plane, peer)

    def _too_many(self, plane: str, who: str) -> HttpError:
        cap = self.guard.max_connections_per_ip
        if (held := THROTTLE.admit(("cap", who))) is not None:
            log.warning(
                "refusing connections from %s on the %s listener: %d open "
                "(server.max_connections_per_ip)%s",
                who,
                plane,
                cap,
                held_note(held, REFUSAL_LOG_INTERVAL_S),
            )
        return HttpError(
            429,
            "too_many_connections",
            f"more than {cap} open connections from {who}; close some and retry",
        )

    def _refuse(self, client: Any, plane: str, peer: str) -> None:
        send_error(client, self._too_many(plane, peer))
        with contextlib.suppress(OSError):
            client.close()

    def _admit_request(self, sock: GuardedSocket, req: Any, peer: str) -> str | HttpError | None:
        """Behind a trusted proxy: count this request against the client it names.

        The client key to release when the request ends, None when not
        counted here (a direct client, counted per connection), or the 429.
        """
        if not sock.trusted_peer or self.limiter is None:
            return None
        forwarded = [v for k, v in req.headers if k == "X-FORWARDED-FOR"]
        client = real_client(peer, forwarded, self.trusted)
        if not self.limiter.acquire(sock.plane, client):
            return self._too_many(sock.plane, client)
        return client

    def _reap(self, reapers: dict[str, IdleReaper]) -> None:
        """Close idle connections past the idle timeout their listener's fill allows."""
        for plane, reaper in reapers.items():
            closed = len([c for c in reaper.due() if c.close_idle()])  # type: ignore[attr-defined]
            if closed and (held := THROTTLE.admit(("reaped", plane))) is not None:
                log.warning(
                    "%s listener %d%% full (%d of server.worker_connections %d): closed %d "
                    "idle connections after %.1fs idle%s",
                    plane,
                    100 * len(reaper) // max(1, reaper.capacity),
                    len(reaper),
                    reaper.capacity,
                    closed,
                    self.idle_policy.idle_timeout(len(reaper), reaper.capacity),
                    held_note(held, REFUSAL_LOG_INTERVAL_S),
                )


class GuardedGeventMixin(GuardMixin):
    """Deadlines, per-client caps, idle reaping and forced closes for the gevent worker."""

    def run(self) -> None:
        import gevent

        capacity = self.worker_connections  # type: ignore[attr-defined]
        self._reapers = {
            DATA: IdleReaper(self.idle_policy, capacity),
            CONTROL: IdleReaper(self.idle_policy, capacity),
        }
        gevent.spawn(self._reap_forever)
        super().run()  # type: ignore[misc]

    def _reap_forever(self) -> None:
        import gevent

        while self.alive:  # type: ignore[attr-defined]
            gevent.sleep(REAP_INTERVAL_S)
            try:
                self._reap(self._reapers)
            except Exception:  # never let the reaper die
                log.exception("idle connection reaper failed")

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        admitted = self._admit(listener, client, addr)
        if admitted is None:
            return
        plane, peer, trusted = admitted
        sock = GuardedSocket(client, self.guard, plane)
        sock.trusted_peer = trusted
        reaper = getattr(self, "_reapers", {}).get(plane)
        if reaper is not None:
            reaper.add(sock)
        try:
            super().handle(listener, sock, addr)  # type: ignore[misc]
        finally:
            if reaper is not None:
                reaper.discard(sock)
            if not trusted:
                self._release(plane, peer)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        if not isinstance(sock, GuardedSocket):
            return super().handle_request(listener_name, req, sock, addr)  # type: ignore[misc]
        sock.start_body()
        peer = addr[0] if isinstance(addr, tuple) and addr else ""
        counted = self._admit_request(sock, req, peer)
        if isinstance(counted, HttpError):
            send_error(sock, counted)
            raise StopIteration("too many requests from one client behind a trusted proxy")
        try:
            result = super().handle_request(listener_name, req, sock, addr)  # type: ignore[misc]
        finally:
            sock.start_idle()
            if counted is not None:
                self._release(sock.plane, counted)
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
        plane, peer, trusted = admitted
        self.nr_conns += 1  # type: ignore[attr-defined]
        client_sock.setblocking(True)
        release = None
        if self.limiter is not None and not trusted:
            release = lambda: self._release(plane, peer)  # noqa: E731
        sock = GuardedSocket(client_sock, self.guard, plane, on_close=release)
        sock.trusted_peer = trusted
        conn = TConn(self.cfg, sock, client_addr, listener.getsockname())  # type: ignore[attr-defined,arg-type]
        self.enqueue_req(conn)  # type: ignore[attr-defined]

    def murder_keepalived(self, force: bool = False) -> None:
        """gunicorn's keep-alive expiry, with the idle timeout scaled by the fill level."""
        import time

        capacity = self.worker_connections  # type: ignore[attr-defined]
        timeout = self.idle_policy.idle_timeout(self.nr_conns, capacity)  # type: ignore[attr-defined]
        early = self.idle_policy.keepalive_s - timeout
        conns = self.keepalived_conns  # type: ignore[attr-defined]
        now = time.monotonic()
        while early > 0 and not force and conns and conns[0].timeout - early <= now:
            conn = conns.popleft()
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.poller.unregister(conn.sock)  # type: ignore[attr-defined]
            self.nr_conns -= 1  # type: ignore[attr-defined]
            conn.close()
        super().murder_keepalived(force)  # type: ignore[misc]

    def handle_request(self, req: Any, conn: Any) -> Any:
        sock = conn.sock
        if not isinstance(sock, GuardedSocket):
            return super().handle_request(req, conn)  # type: ignore[misc]
        sock.start_body()
        peer = conn.client[0] if isinstance(conn.client, tuple) and conn.client else ""
        counted = self._admit_request(sock, req, peer)
        if isinstance(counted, HttpError):
            send_error(sock, counted)
            return False
        try:
            keep_alive = super().handle_request(req, conn)  # type: ignore[misc]
        finally:
            sock.start_idle()
            if counted is not None:
                self._release(sock.plane, counted)
        return keep_alive and not sock.close_after_response


def worker_class(kind: str, guard: GuardSettings) -> type:
    """The gunicorn worker class for ``server.worker_class``, carrying ``guard``."""
    if kind == "gevent":
        from gunicorn.workers.ggevent import GeventWorker

        return type("SpotrelayGeventWorker", (GuardedGeventMixin, GeventWorker), {"guard": guard})
    from gunicorn.workers.gthread import ThreadWorker

    return type("SpotrelayThreadWorker", (GuardedThreadMixin, ThreadWorker), {"guard": guard})
