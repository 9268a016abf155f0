"""Registry, balancer and retry policy: the router's plain classes, with a fake clock."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from spotrelay.core.protocol import NodeLoad, parse_report
from spotrelay.router.registry.backend import MemoryBackend
from spotrelay.router.registry.balancer import Balancer, rendezvous_weight
from spotrelay.router.registry.node import ModelStatus, NodeStatus
from spotrelay.router.registry.ops import Delete, Drain, Eject, NodeEvent, Rebuild, Restore, Upsert
from spotrelay.router.registry.outlier import EjectionPolicy
from spotrelay.router.registry.state import Registry, RegistryFull
from spotrelay.router.retry import Failure, FailureKind, RetryBudget, RetryPolicy
from spotrelay.router.transport.netpolicy import NetPolicy
from spotrelay.router.transport.pools import NodePools
from tests.support.clock import Clock

NETS = NetPolicy(["10.0.0.0/8"])


class Pool:
    def __init__(self, target) -> None:
        self.target = target
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Held(MemoryBackend):
    """A backend whose view is not current (what RedisSync is while Redis is away)."""

    holds_expiry = True


def make(ttl=15.0, failures=3, base=10.0, cap=300.0, backend=None):
    clock = Clock()
    reg = Registry(ttl, EjectionPolicy(failures, base, cap), clock=clock, backend=backend)
    events = []
    reg.listeners.append(lambda event, node: events.append((event, node.id)))
    return reg, clock, events


def upsert(node_id, n=1, models=("m",), state="ready", load=None, **shared):
    url = f"http://10.0.0.{n}:8000"
    report = parse_report({"url": url, "models": list(models), "state": state, "load": load or {}})
    return Upsert(node_id, report, NETS.validate(url), **shared)


def put(reg, node_id, n=1, models=("m",), state="ready", load=None):
    return reg.apply(upsert(node_id, n, models, state, load)).node


# -- registry ------------------------------------------------------------------------------


def test_shared_view_updates_keep_per_worker_state():
    """What the Redis sync applies: ages, sticky drains, whole-view rebuilds."""
    reg, clock, events = make(ttl=15)
    a = put(reg, "a", 1)
    reg.acquire(a)
    reg.record_failure(a)
    outcome = reg.apply(upsert("b", 2, age_s=14.0))
    b = outcome.node
    assert outcome.created and b.last_seen == clock.now - 14.0 and reg.candidates("m") == [a, b]
    clock.now += 1.5
    assert [n.id for n in reg.expire()] == ["b"]  # the age counted towards the TTL
    # A drain arriving with a heartbeat sticks; a later heartbeat does not undo it.
    reg.apply(upsert("a", 1, drained=True), local=False)
    put(reg, "a", 1)
    assert a.admin_drained and ("drained", "a") in events
    # A rebuild keeps what this worker counts about nodes that stay, drops the others.
    reg.apply(Rebuild((upsert("a", 1, drained=True), upsert("c", 3, age_s=2.0))), local=False)
    assert {n.id for n in reg.nodes()} == {"a", "c"}
    assert reg.get("a") is a and a.in_flight == 1
    assert reg.outliers.of(a).consecutive_failures == 1


class Recording(MemoryBackend):
    """A backend that keeps what the registry hands it."""

    def __init__(self) -> None:
        self.ops = []

    def applied(self, op, outcome) -> None:
        self.ops.append(op)


def test_every_local_op_reaches_the_backend_and_none_it_applied_goes_back():
    """One path: whatever changes a node is handed over once, also when it changed nothing
    here (another worker may know the node); what the backend applied is not handed back."""
    backend = Recording()
    reg, clock, _ = make(ttl=15, failures=1, backend=backend)
    a = put(reg, "a", 1)
    reg.apply(Drain("elsewhere"))
    reg.apply(Drain("a"), local=False)
    reg.apply(Rebuild((upsert("a", 1),)), local=False)
    assert reg.record_failure(a)
    clock.now += 16
    reg.expire()
    assert [type(op).__name__ for op in backend.ops] == ["Upsert", "Drain", "Eject", "Expire"]
    assert backend.ops[1].node_id == "elsewhere" and backend.ops[3].node_id == "a"


def test_a_full_registry_lets_a_fresh_heartbeat_displace_a_silent_node():
    """Over max_nodes a node heard from now wins over one silent for two thirds of ttl_s
    (as an expiry: what is open on it is cut); an old heartbeat from a shared view does not."""
    clock = Clock()
    reg = Registry(6.0, clock=clock, max_nodes=2)
    events = []
    reg.listeners.append(lambda event, node: events.append((event, node.id)))
    a = put(reg, "a", 1)
    clock.now += 3
    put(reg, "b", 2)
    with pytest.raises(RegistryFull):
        put(reg, "c", 3)  # a is silent for 3 s only
    clock.now += 1.5
    with pytest.raises(RegistryFull):
        reg.apply(upsert("c", 3, age_s=4.0), local=False)  # as old as a: no
    outcome = reg.apply(upsert("c", 3))
    assert outcome.created and outcome.evicted is a and a.removed
    assert {n.id for n in reg.nodes()} == {"b", "c"} and ("expired", "a") in events


def test_held_expiry_serves_the_last_view():
    """Redis down: nodes whose heartbeats may go to other workers are neither dropped nor
    filtered out as silent."""
    backend = Held()
    reg, clock, _ = make(ttl=15, backend=backend)
    a = put(reg, "a", 1)
    clock.now += 60
    assert reg.expire() == [] and reg.candidates("m") == [a] and reg.any_ready()
    backend.holds_expiry = False
    assert reg.candidates("m") == [] and [n.id for n in reg.expire()] == ["a"]


def test_register_heartbeat_and_expire():
    reg, clock, events = make(ttl=15)
    a = put(reg, "a", 1)
    assert reg.candidates("m") == [a]
    clock.now += 10
    put(reg, "a", 1, load={"running": 2, "waiting": 1})
    assert a.queue == 3
    clock.now += 14
    assert reg.expire() == [] and reg.candidates("m") == [a]
    clock.now += 2
    assert reg.candidates("m") == [], "a stale node is not routable even before the sweep"
    assert reg.expire() == [a]
    assert reg.get("a") is None
    assert events == [("registered", "a"), ("expired", "a")]


def test_states_and_candidates():
    reg, _clock, _ = make()
    a = put(reg, "a", 1)
    b = put(reg, "b", 2, state="draining")
    c = put(reg, "c", 3, models=("other",))
    assert reg.candidates("m") == [a]
    assert b.status is NodeStatus.DRAINING and c.status is NodeStatus.READY
    assert reg.ready_models() == ["m", "other"]
    assert reg.counts_by_status() == {"ready": 2, "draining": 1, "ejected": 0, "unhealthy": 0}
    put(reg, "b", 2, state="ready")
    assert set(reg.candidates("m")) == {a, b}


def test_admin_drain_sticks_until_deleted():
    reg, _clock, _events = make()
    a = put(reg, "a", 1)
    reg.acquire(a)
    reg.acquire(a)
    assert reg.apply(Drain("a")).node.in_flight == 2
    put(reg, "a", 1, state="ready")  # the next heartbeat says ready...
    assert a.status is NodeStatus.DRAINING and reg.candidates("m") == []
    assert reg.apply(Drain("missing")).node is None
    assert reg.apply(Delete("a")).node is a and a.removed
    a2 = put(reg, "a", 1)
    assert a2 is not a and a2.status is NodeStatus.READY


def test_pools_follow_the_nodes():
    """One pool per node, made when it registers, replaced when it moves, closed when it
    leaves; a node registered again under the same id gets a pool of its own."""
    reg, clock, events = make(ttl=15)
    pools = NodePools(Pool)
    reg.listeners.append(pools.on_node_event)
    a = put(reg, "a", 1)
    old = pools.get(a)
    assert old.target.url == a.url and pools.get(a) is old
    put(reg, "a", 2)
    assert a.url == "http://10.0.0.2:8000" and old.closed and ("moved", "a") in events
    moved = pools.get(a)
    assert moved is not old and moved.target.url == a.url and not moved.closed
    clock.now += 16
    assert reg.expire() == [a] and moved.closed
    late = pools.get(a)  # a request that picked it just before it left
    assert late.closed, "not kept for a node that is gone"
    a2 = put(reg, "a", 2)
    assert pools.get(a2) is not moved and not pools.get(a2).closed


def test_model_status_unknown_only_when_never_seen():
    reg, clock, _ = make(ttl=5)
    assert reg.model_status("m") is ModelStatus.UNAVAILABLE, "nothing registered: wait"
    put(reg, "a", 1)
    assert reg.model_status("m") is ModelStatus.AVAILABLE
    assert reg.model_status("nope") is ModelStatus.UNKNOWN
    clock.now += 6
    reg.expire()
    put(reg, "b", 2, models=("other",))
    assert reg.model_status("m") is ModelStatus.UNAVAILABLE, "seen before: wait for capacity"


def test_ejection_after_consecutive_failures_and_growth():
    reg, clock, events = make(failures=3, base=10, cap=25)
    a = put(reg, "a", 1)
    assert not reg.record_failure(a) and not reg.record_failure(a)
    reg.record_success(a)
    assert not reg.record_failure(a) and not reg.record_failure(a)
    assert reg.record_failure(a), "third consecutive failure ejects"
    assert a.status is NodeStatus.EJECTED and reg.candidates("m") == []
    assert reg.outliers.due_for_probe() == []
    clock.now += 10
    assert reg.outliers.due_for_probe() == [a]
    assert reg.apply(Restore(a)).changed and a.status is NodeStatus.READY
    for _ in range(3):
        reg.record_failure(a)
    record = reg.outliers.of(a)
    assert record.ejections == 2 and record.ejected_until == pytest.approx(clock.now + 20)
    clock.now += 20
    reg.apply(Restore(a))
    for _ in range(3):
        reg.record_failure(a)
    capped = reg.outliers.of(a).ejected_until
    assert capped == pytest.approx(clock.now + 25), "capped at max_ejection_s"
    assert [e for e in events if e[0] in ("ejected", "restored")] == [
        ("ejected", "a"), ("restored", "a"), ("ejected", "a"), ("restored", "a"), ("ejected", "a")
    ]  # fmt: skip


def test_ejections_decay_after_a_healthy_period():
    reg, clock, _ = make(failures=1, base=10, cap=30)
    a = put(reg, "a", 1)
    reg.record_failure(a)
    clock.now += 10
    reg.apply(Restore(a))
    clock.now += 31
    reg.record_failure(a)
    record = reg.outliers.of(a)
    assert record.ejections == 1 and record.ejected_until == pytest.approx(clock.now + 10)


def test_snapshot_shape():
    reg, _clock, _ = make()
    a = put(reg, "a", 1, load={"running": 1, "waiting": 2, "kv_cache_usage": 0.5})
    reg.acquire(a)
    [entry] = reg.snapshot()
    doc = entry.to_json()
    assert doc["id"] == "a" and doc["state"] == "ready" and doc["in_flight"] == 1
    assert doc["load"] == {"running": 1, "waiting": 2, "kv_cache_usage": 0.5}
    assert doc["failures"] == {"consecutive": 0, "total": 0}
    assert doc["ejection"] == {"ejected": False, "count": 0, "remaining_s": 0.0}


# -- balancer ------------------------------------------------------------------------------


def nodes(reg, count):
    return [put(reg, f"n{i}", i + 1) for i in range(count)]


def test_p2c_prefers_fewer_in_flight_then_lower_engine_queue():
    reg, _, _ = make()
    a, b = nodes(reg, 2)
    bal = Balancer(random.Random(1))
    a.in_flight = 5
    assert {bal.pick([a, b]).id for _ in range(50)} == {"n1"}
    a.in_flight = b.in_flight = 2
    a.load = NodeLoad(running=9, waiting=3)
    assert {bal.pick([a, b]).id for _ in range(50)} == {"n1"}


def test_p2c_spreads_equal_nodes_and_avoids_the_busiest():
    reg, _, _ = make()
    ns = nodes(reg, 4)
    ns[3].in_flight = 100
    bal = Balancer(random.Random(7))
    picks = Counter(bal.pick(ns).id for _ in range(3000))
    assert picks["n3"] == 0, "the busiest node never wins a comparison"
    for name in ("n0", "n1", "n2"):
        assert 800 < picks[name] < 1200


def test_exclude_and_empty():
    reg, _, _ = make()
    a, b = nodes(reg, 2)
    bal = Balancer()
    assert bal.pick([a, b], exclude={"n0"}) is b
    assert bal.pick([a, b], exclude={"n0", "n1"}) is None
    assert bal.pick([]) is None


def test_session_affinity_is_stable_and_moves_minimally():
    reg, _, _ = make()
    ns = nodes(reg, 5)
    bal = Balancer()
    keys = [f"session-{i}" for i in range(500)]
    before = {k: bal.pick(ns, session_key=k).id for k in keys}
    assert before == {k: bal.pick(ns, session_key=k).id for k in keys}
    assert len(set(before.values())) == 5
    after = {k: bal.pick(ns[:4], session_key=k).id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "n4" for k in moved), "only sessions of the removed node move"
    assert rendezvous_weight("k", "a") != rendezvous_weight("k", "b")


# -- retry policy and budget -------------------------------------------------------------


@pytest.mark.parametrize(
    "failure, retryable, unhealthy",
    [
        (Failure(FailureKind.CONNECT_ERROR, "a"), True, True),
        (Failure(FailureKind.CONNECT_TIMEOUT, "a"), True, True),
        (Failure(FailureKind.RESET, "a"), True, True),
        (Failure(FailureKind.FIRST_BYTE_TIMEOUT, "a"), True, True),
        (Failure(FailureKind.ERROR_EVENT, "a"), True, True),
        (Failure(FailureKind.STATUS, "a", status=429), True, False),
        (Failure(FailureKind.STATUS, "a", status=500), True, True),
        (Failure(FailureKind.STATUS, "a", status=502), True, True),
        (Failure(FailureKind.STATUS, "a", status=503), True, True),
        (Failure(FailureKind.STATUS, "a", status=504), True, True),
        (Failure(FailureKind.STATUS, "a", status=501), False, False),
    ],
)
def test_retryable_conditions(failure, retryable, unhealthy):
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(failure, 1) is retryable
    assert failure.unhealthy is unhealthy
    assert not policy.should_retry(failure, 3), "attempts are capped"


def test_reason_labels():
    assert Failure(FailureKind.STATUS, "a", status=503).reason == "status_503"
    assert Failure(FailureKind.RESET, "a").reason == "reset"


def test_full_jitter_backoff_bounds():
    policy = RetryPolicy(backoff_base_ms=25, backoff_max_ms=250, rng=random.Random(3))
    for retry, ceiling in [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (9, 0.25)]:
        samples = [policy.backoff_s(retry) for _ in range(400)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8 and min(samples) < ceiling * 0.2, "spread out"


def test_retry_budget():
    budget = RetryBudget(budget_percent=20, min_retry_concurrency=3)
    for _ in range(10):
        budget.start_request()
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    for _ in range(20):
        budget.start_request()
    assert budget.limit() == 6
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    budget.release()
    assert budget.try_acquire()
    zero = RetryBudget(budget_percent=0, min_retry_concurrency=0)
    zero.start_request()
    assert not zero.try_acquire()


def test_retry_budget_waits_for_a_slot():
    import threading
    import time

    budget = RetryBudget(budget_percent=0, min_retry_concurrency=1, wait_s=5)
    budget.start_request()
    assert budget.acquire()
    threading.Timer(0.1, budget.release).start()
    started = time.monotonic()
    assert budget.acquire(), "a slot freed while waiting"
    assert 0.05 < time.monotonic() - started < 2
    assert not budget.acquire(max_wait_s=0.05), "the request deadline bounds the wait"
    assert not RetryBudget(0, 0, wait_s=0).acquire()


def test_unhealthy_node_is_not_routed_but_stays_registered():
    """A node reporting ``unhealthy`` (a hung engine) gets no work; ``ready`` brings it back."""
    reg, _clock, events = make()
    a = put(reg, "a", 1)
    put(reg, "b", 2)
    put(reg, "a", 1, state="unhealthy")
    assert a.status is NodeStatus.UNHEALTHY and not a.routable and a.lost
    assert [n.id for n in reg.candidates("m")] == ["b"]
    assert reg.get("a") is a and ("unhealthy", "a") in events
    assert reg.counts_by_status()["unhealthy"] == 1
    put(reg, "a", 1, state="ready")
    assert a.status is NodeStatus.READY and {n.id for n in reg.candidates("m")} == {"a", "b"}
    assert events[-1] == ("state", "a")


def test_exchanges_are_tracked_and_born_cut_on_a_lost_node():
    """Every open attempt is an exchange the proxy can cut; one opened on a node lost
    just after it was picked starts cut, so it fails at once instead of waiting."""
    reg, _clock, _events = make()
    a = put(reg, "a", 1)
    ex = reg.acquire(a)
    assert ex.reason is None and reg.open_exchanges(a) == [ex] and a.in_flight == 1
    frozen = Eject(a, NodeEvent.FROZEN)
    assert reg.apply(frozen).changed and not reg.apply(frozen).changed
    late = reg.acquire(a)
    assert late.reason == "node a is ejected"
    assert ex.cut("node a frozen") and not ex.cut("again") and ex.reason == "node a frozen"
    reg.release(a, ex)
    reg.release(a, late)
    assert reg.open_exchanges(a) == [] and a.in_flight == 0


def test_a_node_missing_from_a_rebuilt_view_is_forgotten_not_lost():
    """After Redis comes back empty a rebuilt view can lack a node that serves fine:
    it is forgotten (its next heartbeat brings it back) and what is open on it goes on;
    a node deleted for real has what is open on it cut."""
    from spotrelay.router.metrics import RouterMetrics
    from spotrelay.router.registry.node_loss import NodeLoss

    reg, _clock, events = make()
    NodeLoss(reg, RouterMetrics())
    a = put(reg, "a", 1)
    b = put(reg, "b", 2)
    on_a, on_b = reg.acquire(a), reg.acquire(b)
    reg.apply(Rebuild((upsert("b", 2),)), local=False)
    assert reg.get("a") is None and ("forgotten", "a") in events
    assert on_a.reason is None, "not cut: the node was not lost"
    reg.apply(Delete("b"))
    assert on_b.reason is not None, "a delete cuts"
    reg.release(a, on_a)
    reg.release(b, on_b)
