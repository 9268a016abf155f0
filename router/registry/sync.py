"""Keeping one worker's local view in step with the shared view in Redis/Valkey.

Routing never waits for Redis: every op is applied to the local
:class:`~spotrelay.router.registry.state.Registry` first, which hands it to
this backend; upserts, drains, deletes and expiries are queued for Redis
(:mod:`.outbox`), a writer thread sends each (one Lua script per change, see
:mod:`spotrelay.router.registry.store`), Redis publishes it, and every
worker's follower thread applies it on arrival (pub/sub: milliseconds) as
the same op, marked as not local so it is not written back.

On start and after every reconnect the follower subscribes *first*, then
writes back what changed locally while Redis was away (every node of its
view and every heartbeat it accepted, each where Redis lacks it or has it
older; then drains and deletes replayed; a delete's tombstone keeps it
deleted), then
reads a snapshot with its ``rev`` and replaces the local view with it;
messages at or below that ``rev`` were already in the snapshot and are
skipped. While Redis is unreachable the worker serves its last view, holds
TTL expiry (heartbeats may be landing on other workers), accepts heartbeats
locally, and reconnects with jittered backoff.

What comes out of Redis is checked like a registration (:mod:`.intake`).
The write-back sends only nodes this worker heard from
itself, so a node deleted from Redis behind the routers' backs is not
resurrected by a worker that merely learned of it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from spotrelay.core.backoff import Backoff
from spotrelay.core.protocol import NodeReport

from ..transport.netpolicy import NetPolicy
from .intake import Intake, describe_error
from .node import Node
from .ops import Delete, Drain, DrainInstance, Expire, Op, Outcome, Rebuild, Upsert
from .outbox import Outbox, SharedPut, Write
from .state import Registry
from .store import RedisStore

log = logging.getLogger("spotrelay.router.registry.state")

POLL_S = 0.5  # follower wake-up: reconnect requests and stop are seen this fast
PING_S = 5.0  # a PING on the command connection: a silently dead link is noticed this fast


def redis_client(
    url: str, password: str | None, timeout_s: float, ca_file: str | None = None
) -> Any:
    """A redis-py client that fails fast: reconnection is :class:`RedisSync`'s job.

    ``password`` (``registry.redis_password[_file]``) beats one in the URL, which
    redis-py's ``from_url`` would not allow.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.connection import parse_url
    from redis.retry import Retry

    options: dict[str, Any] = parse_url(url)
    options.update(
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=5,
        retry=Retry(NoBackoff(), 0),
        client_name="spotrelay-router",
    )
    if password:
        options["password"] = password
    if ca_file:
        options["ssl_ca_certs"] = ca_file
    pool = redis.ConnectionPool(**options)
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


class RedisSync:
    """The sync backend for ``registry.backend: redis``: writer and follower threads for one
    worker; ``up`` says whether Redis is reachable."""

    registry: Registry  # bound by the registry it serves

    def __init__(
        self,
        netpolicy: NetPolicy,
        store: RedisStore,
        *,
        where: str,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.netpolicy = netpolicy
        self.store = store
        self.where = where  # the URL without password, for logs
        self.backoff = Backoff(0.1, backoff_max_s)
        self.outbox = Outbox()
        self._ever_up: bool | None = None
        self._snapshot_rev = 0
        self._reset = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- the backend's side of the registry (never blocks) -----------------------------------

    def bind(self, registry: Registry) -> None:
        self.registry = registry
        self.intake = Intake(registry, self.netpolicy)

    @property
    def up(self) -> bool:
        return self.outbox.up

    @property
    def holds_expiry(self) -> bool:
        """Once started, until a snapshot is in and while Redis is away."""
        return bool(self._threads) and not self.outbox.up

    @property
    def state(self) -> str:
        """``redis`` (this view is the shared one) or ``redis-down`` (the last view)."""
        return "redis" if self.up else "redis-down"

    def applied(self, op: Op, outcome: Outcome) -> None:
        """Queue the write of a local op other workers must see; per-worker ops stay here.

        A drain or delete goes out also for a node unknown here: another worker may know it.
        """
        match op:
            case Upsert(node_id=node_id, report=report) if outcome.node is not None:
                node = outcome.node
                put = SharedPut(
                    node_id, node.url, report.to_json(), node.admin_drained, self.registry.clock()
                )
                self.outbox.send(put)
            case Drain() | Delete() | Expire():
                self.outbox.send(op)
            case DrainInstance():  # every worker of every router stops using them
                for node, _already in outcome.matched:
                    self.outbox.send(Drain(node.id))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (("registry-follow", self._follow), ("registry-write", self._write)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.outbox.close()

    # -- follower ---------------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once()
            except Exception as exc:  # redis errors, and any bug: never kill the thread
                self._go_down(describe_error(exc))
                if self._stop.wait(self.backoff.next_delay()):
                    return

    def _follow_once(self) -> None:
        self._reset.clear()
        pubsub = self.store.client.pubsub()
        try:
            pubsub.subscribe(self.store.channel)
            confirmed = pubsub.get_message(timeout=self.store_timeout())
            if not confirmed or confirmed["type"] != "subscribe":
                raise ConnectionError("no subscribe confirmation from Redis")
            self._write_back()
            self._rebuild()
            self.backoff.reset()
            self._go_up()
            next_ping = time.monotonic() + PING_S
            while not self._stop.is_set() and not self._reset.is_set():
                msg = pubsub.get_message(timeout=POLL_S)
                if msg is not None and msg["type"] == "message":
                    self.intake.apply_message(msg["data"], self._snapshot_rev)
                if time.monotonic() >= next_ping:
                    self.store.client.ping()  # raises when the link is gone
                    next_ping = time.monotonic() + PING_S
            if self._reset.is_set():
                raise ConnectionError("a write to Redis failed")
        finally:
            pubsub.close()

    def store_timeout(self) -> float:
        pool = self.store.client.connection_pool
        return float(pool.connection_kwargs.get("socket_timeout") or 2.0)

    def _write_back(self) -> None:
        """What this worker changed while Redis was away, before reading the snapshot.

        The nodes of the local view this worker heard from itself (or drained
        meanwhile) and every heartbeat accepted meanwhile first, each written
        only if Redis has nothing newer, aged by this worker's own last
        heartbeat; then the drains and deletes. In that order because a drain
        needs the node in Redis: replayed first, into a Redis that came back
        empty, it found nothing to drain, and a heartbeat landing on another
        worker a moment later made this worker's older (drained) copy lose,
        so the drain was gone. Nodes only learned from Redis are not written:
        one deleted there must stay deleted.
        """
        ops, puts = self.outbox.take()
        try:
            now = self.registry.clock()
            view = self.registry.nodes()
            heard = self.outbox.heard({n.id for n in view}, puts)
            nodes = {
                n.id: (
                    n.id,
                    n.url,
                    _report_doc(n),
                    n.admin_drained,
                    now - heard.get(n.id, n.last_seen),
                )
                for n in view
                if n.id in heard or isinstance(ops.get(n.id), Drain)
            }
            for put in puts.values():
                nodes.setdefault(
                    put.node_id,
                    (put.node_id, put.url, put.report, put.drained, now - put.received),
                )
            self.store.restore(list(nodes.values()))
            for node_id, op in ops.items():
                if isinstance(op, Drain):
                    self.store.drain(node_id)
                else:
                    self.store.remove(node_id)
        except Exception:
            self.outbox.give_back(ops, puts)
            raise

    def _rebuild(self) -> None:
        """Replace the view with the snapshot's valid, live nodes, freshest first.

        Freshest first and nothing silent past ``ttl_s``: when there are more
        than ``registry.max_nodes``, stale junk must not take the places of
        nodes that are heartbeating.
        """
        snap = self.store.snapshot()
        for bad in snap.bad:
            self.intake.warn(bad)
        live = [
            n for n in sorted(snap.nodes, key=lambda n: n.age_s) if n.age_s <= self.registry.ttl_s
        ]
        ops = [op for op in map(self.intake.upsert, live) if op is not None]
        self.registry.apply(Rebuild(tuple(ops)), local=False)
        self._snapshot_rev = snap.rev
        log.debug("registry view rebuilt from Redis: %d nodes at rev %d", len(ops), snap.rev)

    # -- writer -----------------------------------------------------------------------------

    def _write(self) -> None:
        while (write := self.outbox.next()) is not None:
            if self.outbox.keep_if_down(write):
                continue
            try:
                self._send(write)
            except Exception as exc:
                what = f"{type(write).__name__} {write.node_id}"
                if _refused_by_redis(exc):  # Redis answered: retrying the same write cannot help
                    log.warning("registry write %s refused: %s", what, describe_error(exc))
                    continue
                self.outbox.keep(write)
                log.debug("registry write %s failed: %s", what, describe_error(exc))
                self._reset.set()

    def _send(self, write: Write) -> None:
        match write:
            case SharedPut(write_back=write_back, received=received):
                age = max(0.001, self.registry.clock() - received) if write_back else 0
                self.store.put(write.node_id, write.url, write.report, write.drained, age_s=age)
            case Drain(node_id=node_id):
                self.store.drain(node_id)
            case Delete(node_id=node_id):
                self.store.remove(node_id, "delete")
            case Expire(node_id=node_id):
                self.store.remove(node_id, "expire")

    # -- up and down ------------------------------------------------------------------------

    def _go_up(self) -> None:
        """Up; writes kept during the write-back and rebuild go out now."""
        was = self.outbox.up
        self.outbox.go_up()
        self._log_transition(was, True)

    def _go_down(self, reason: str) -> None:
        was = self.outbox.up
        self.outbox.up = False
        self._log_transition(was, False, reason)

    def _log_transition(self, was: bool, up: bool, reason: str = "") -> None:
        """One line per change (and one for the first state, up or not)."""
        if was == up and self._ever_up is not None:
            return
        first = self._ever_up is None
        self._ever_up = bool(self._ever_up) or up
        if up:
            log.info(
                "registry backend redis up (%s): view rebuilt, %d nodes",
                self.where,
                len(self.registry.nodes()),
            )
        else:
            log.warning(
                "registry backend redis %s (%s): %s; serving the last view, accepting "
                "heartbeats locally, reconnecting with backoff",
                "unreachable at start" if first else "down",
                self.where,
                reason,
            )


def _report_doc(node: Node) -> dict[str, Any]:
    """The node's last report, as the agent's JSON body (for the write-back)."""
    return NodeReport(
        url=node.url,
        models=tuple(sorted(node.models)),
        state=node.reported_state,
        load=node.load,
        labels=dict(node.labels),
        engine=node.engine,
        instance_id=node.instance_id,
        risk=node.risk,
    ).to_json()


def _refused_by_redis(exc: BaseException) -> bool:
    """An error reply (a script error, NOPERM), not a broken link."""
    try:
        from redis.exceptions import ResponseError
    except ImportError:
        return False
    return isinstance(exc, ResponseError)
