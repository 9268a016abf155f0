"""Keeping one worker's local view in step with the shared view in Redis/Valkey.

Routing never waits for Redis: the control plane applies a change to the
local :class:`~spotrelay.router.registry.state.Registry` first and queues the
Redis write; a writer thread sends it (one Lua script per change, see
:mod:`spotrelay.router.registry.store`), Redis publishes it, and every
worker's follower thread applies it on arrival (pub/sub: milliseconds).

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

Redis is inside the trust boundary (it must require auth), but what comes
out of it is checked like a registration: node ids, the report
(:func:`~spotrelay.core.protocol.parse_report`) and the URL (the SSRF policy).
An entry or message that fails is skipped and logged once per key; it never
takes the link down. The write-back sends only nodes this worker heard from
itself, so a node deleted from Redis behind the routers' backs is not
resurrected by a worker that merely learned of it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from spotrelay.core.backoff import Backoff
from spotrelay.core.protocol import NodeReport, ProtocolError, parse_report

from ..transport.netpolicy import NetPolicy, NodeURLError
from .state import Registry, RegistryFull
from .store import BadEntry, RedisStore, SharedNode, parse_event

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
    """Writer and follower threads for one worker; ``up`` says whether Redis is reachable."""

    def __init__(
        self,
        registry: Registry,
        netpolicy: NetPolicy,
        store: RedisStore,
        *,
        where: str,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.netpolicy = netpolicy
        self.store = store
        self.where = where  # the URL without password, for logs
        self.backoff = Backoff(0.1, backoff_max_s)
        self.up = False
        self._ever_up: bool | None = None
        self._writes: queue.SimpleQueue[tuple[str, str, Any] | None] = queue.SimpleQueue()
        # Unsent while Redis is away: drains and deletes, and the latest heartbeat per node
        # (url, report, drained, when it arrived), for the write-back.
        self._pending_ops: dict[str, str] = {}
        self._pending_puts: dict[str, tuple[str, dict[str, Any], bool, float]] = {}
        self._pending_lock = threading.Lock()
        self._snapshot_rev = 0
        # Nodes this worker heard from directly (id -> local clock of the last heartbeat):
        # only these go into a write-back.
        self._heard: dict[str, float] = {}
        self._warned: dict[str, str] = {}  # bad keys already logged, with the reason
        self._reset = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- what the control plane calls (never blocks) ----------------------------------------

    def put(self, node_id: str, url: str, report: dict[str, Any], drained: bool) -> None:
        """A heartbeat this worker received from the node itself."""
        now = self.registry.clock()
        with self._pending_lock:
            if self._pending_ops.get(node_id) == "delete":  # registered again since
                del self._pending_ops[node_id]
            self._heard[node_id] = now
        self._writes.put(("put", node_id, (url, report, drained, now)))

    def drain(self, node_id: str) -> None:
        self._writes.put(("drain", node_id, None))

    def delete(self, node_id: str) -> None:
        with self._pending_lock:
            self._heard.pop(node_id, None)
        self._writes.put(("delete", node_id, None))

    def expire(self, node_id: str) -> None:
        self._writes.put(("expire", node_id, None))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.registry.hold_expiry = True  # until the first snapshot is in
        for name, target in (("registry-follow", self._follow), ("registry-write", self._write)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._writes.put(None)

    # -- follower ---------------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow_once()
            except Exception as exc:  # redis errors, and any bug: never kill the thread
                self._set_up(False, _describe(exc))
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
                    self._apply(msg["data"])
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
        ops, puts = self._take_pending()
        try:
            now = self.registry.clock()
            with self._pending_lock:
                known = {n.id for n in self.registry.nodes()}
                self._heard = {i: t for i, t in self._heard.items() if i in known or i in puts}
                heard = dict(self._heard)
            nodes = {
                n.id: (
                    n.id,
                    n.url,
                    _report_doc(n),
                    n.admin_drained,
                    now - heard.get(n.id, n.last_seen),
                )
                for n in self.registry.nodes()
                if n.id in heard or ops.get(n.id) == "drain"
            }
            for node_id, (url, report, drained, received) in puts.items():
                nodes.setdefault(node_id, (node_id, url, report, drained, now - received))
            self.store.restore(list(nodes.values()))
            for node_id, op in ops.items():
                if op == "drain":
                    self.store.drain(node_id)
                else:
                    self.store.remove(node_id)
        except Exception:
            self._return_pending(ops, puts)
            raise

    def _rebuild(self) -> None:
        """Replace the view with the snapshot's valid, live nodes, freshest first.

        Freshest first and nothing silent past ``ttl_s``: when there are more
        than ``registry.max_nodes``, stale junk must not take the places of
        nodes that are heartbeating.
        """
        snap = self.store.snapshot()
        for bad in snap.bad:
            self._warn_bad(bad)
        entries = []
        for shared in sorted(snap.nodes, key=lambda n: n.age_s):
            if shared.age_s > self.registry.ttl_s:
                continue
            entry = self._entry(shared)
            if entry is not None:
                entries.append(entry)
        self.registry.replace_all(entries)
        self._snapshot_rev = snap.rev
        log.debug("registry view rebuilt from Redis: %d nodes at rev %d", len(entries), snap.rev)

    def _entry(self, shared: SharedNode) -> tuple | None:
        try:
            report = parse_report(shared.report)
            node = self.registry.get(shared.id)
            if node is not None and node.target.url == shared.url:
                target = node.target  # vetted already: no second DNS lookup per heartbeat
            else:
                target = self.netpolicy.validate(shared.url)
        except (ProtocolError, NodeURLError) as exc:
            self._warn_bad(BadEntry(shared.id, str(exc)))
            return None
        self._warned.pop(shared.id, None)
        return (shared.id, report, target, shared.age_s, shared.drained)

    def _warn_bad(self, bad: BadEntry) -> None:
        """One line per bad key (again only if its reason changes): junk must not flood logs."""
        if self._warned.get(bad.key) == bad.reason:
            return
        if len(self._warned) >= 10_000:
            self._warned.clear()
        self._warned[bad.key] = bad.reason
        log.warning("ignoring node %s from the shared registry: %s", bad.key, bad.reason)

    def _apply(self, data: bytes) -> None:
        try:
            event = parse_event(data)
        except BadEntry as exc:
            self._warn_bad(exc)
            return
        if event["rev"] <= self._snapshot_rev:
            return  # already in the snapshot
        try:
            self._apply_event(event)
        except Exception as exc:  # a bug must not take the link down; logged once per node
            self._warn_bad(BadEntry(event["id"], f"not applied: {_describe(exc)}"))

    def _apply_event(self, event: dict[str, Any]) -> None:
        node_id, op = event["id"], event["op"]
        if op == "put":
            shared = SharedNode(
                node_id, event["url"], event["report"], event["drained"], event["age_s"]
            )
            entry = self._entry(shared)
            if entry is not None:
                try:
                    self._upsert(entry)
                except RegistryFull as exc:  # this worker's cap; the others may know it
                    log.warning("node %s from the shared registry not taken: %s", node_id, exc)
        elif op == "drain":
            self.registry.drain(node_id)
        elif op in ("delete", "expire"):
            self.registry.remove(node_id, "expired" if op == "expire" else "deleted")

    def _upsert(self, entry: tuple) -> None:
        """Apply a heartbeat; when full, a heartbeating node wins over one silent for 2/3 of ttl_s
        (as for a registration this worker receives itself)."""
        node_id, report, target, age_s, drained = entry
        try:
            self.registry.upsert(node_id, report, target, age_s=age_s, drained=drained)
        except RegistryFull:
            silent_s = self.registry.ttl_s * 2 / 3
            if age_s >= silent_s or self.registry.evict_silent(silent_s) is None:
                raise
            self.registry.upsert(node_id, report, target, age_s=age_s, drained=drained)

    # -- writer -----------------------------------------------------------------------------

    def _write(self) -> None:
        while (item := self._writes.get()) is not None:
            op, node_id, args = item
            if self._kept_while_down(op, node_id, args):
                continue
            try:
                if op in ("put", "restore"):
                    url, report, drained, received = args
                    age = max(0.001, self.registry.clock() - received) if op == "restore" else 0
                    self.store.put(node_id, url, report, drained, age_s=age)
                elif op == "drain":
                    self.store.drain(node_id)
                else:
                    self.store.remove(node_id, op)
            except Exception as exc:
                if _refused_by_redis(exc):  # Redis answered: retrying the same write cannot help
                    log.warning("registry write %s %s refused: %s", op, node_id, _describe(exc))
                    continue
                with self._pending_lock:
                    self._keep(op, node_id, args)
                log.debug("registry write %s %s failed: %s", op, node_id, _describe(exc))
                self._reset.set()

    def _kept_while_down(self, op: str, node_id: str, args: Any) -> bool:
        """Keep the change for the write-back if Redis is down; True if kept.

        Checked under the lock :meth:`_go_up` holds while it flips ``up`` and
        takes what was kept: a change is either kept before that (and
        requeued) or sent after it, never kept once nobody will requeue it.
        """
        with self._pending_lock:
            if self.up:
                return False
            self._keep(op, node_id, args)
            return True

    def _keep(self, op: str, node_id: str, args: Any) -> None:
        """Remember an unsent change (lock held); not expiries: whoever sees one redoes it."""
        if op in ("put", "restore"):
            self._pending_puts[node_id] = args
            if self._pending_ops.get(node_id) == "delete":  # registered again since
                del self._pending_ops[node_id]
        elif op == "delete":
            self._pending_ops[node_id] = "delete"
            self._pending_puts.pop(node_id, None)
        elif op == "drain" and self._pending_ops.get(node_id) != "delete":
            self._pending_ops[node_id] = "drain"

    def _take_pending(self) -> tuple[dict[str, str], dict[str, Any]]:
        with self._pending_lock:
            return self._take_pending_locked()

    def _take_pending_locked(self) -> tuple[dict[str, str], dict[str, Any]]:
        ops, self._pending_ops = self._pending_ops, {}
        puts, self._pending_puts = self._pending_puts, {}
        return ops, puts

    def _return_pending(self, ops: dict[str, str], puts: dict[str, Any]) -> None:
        """Put back what a failed write-back took; anything newer that arrived meanwhile wins."""
        with self._pending_lock:
            self._pending_ops = {**ops, **self._pending_ops}
            self._pending_puts = {**puts, **self._pending_puts}

    def _go_up(self) -> None:
        """Up; changes kept during the write-back and rebuild go out now.

        Heartbeats before drains and deletes, as in :meth:`_write_back`.
        """
        with self._pending_lock:
            self._set_up(True)
            ops, puts = self._take_pending_locked()
        for node_id, args in puts.items():
            self._writes.put(("restore", node_id, args))
        for node_id, op in ops.items():
            self._writes.put((op, node_id, None))

    # -- state ------------------------------------------------------------------------------

    def _set_up(self, up: bool, reason: str = "") -> None:
        self.registry.hold_expiry = not up
        if up == self.up and self._ever_up is not None:
            return
        first = self._ever_up is None
        self.up = up
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


def _report_doc(node: Any) -> dict[str, Any]:
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


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
