"""The router's parts wired together, and the control-plane operations.

:class:`RouterService` owns one of each plain class (registry, balancer,
retry policy and budget, proxy, health monitor, metrics, auth, network
policy, node connection pools), each made by a small ``make_*`` function. The
Flask views in :mod:`spotrelay.router.views` only translate HTTP to calls on
it, so tests can drive the whole router without a web server. A control-plane
call changes node state the one way there is: it builds an op and applies it
to the registry (:mod:`.registry.ops`), which shares it through its sync
backend.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spotrelay.core.control_api import (
    DrainedNode,
    InstanceDrain,
    NodeAck,
    NodeDeleted,
    NodeDrain,
    error_doc,
)
from spotrelay.core.protocol import (
    ProtocolError,
    parse_report,
    valid_instance_id,
    valid_node_id,
)
from spotrelay.core.ticker import Ticker

from .auth import ControlPlaneAuth, DataPlaneAuth
from .dataplane import DataPlane
from .metrics import RouterMetrics
from .metrics_share import Publisher
from .proxy import Proxy, ProxyRequest
from .registry.backend import MemoryBackend, SyncBackend
from .registry.balancer import Balancer
from .registry.health import HealthMonitor, http_probe
from .registry.node import Node
from .registry.node_loss import NodeLoss
from .registry.ops import Delete, Drain, DrainInstance, NodeEvent, Upsert
from .registry.outlier import EjectionPolicy
from .registry.state import Registry, RegistryFull
from .retry import RetryBudget, RetryPolicy
from .settings import RouterConfig
from .stream.assembly import assembled_answer
from .stream.disconnect import ClientWatch
from .stream.hedge import StallPolicy
from .stream.relay import StreamHandler
from .stream.resume_handler import resume_handler_factory
from .tracing import make_tracing
from .transport.netpolicy import NetPolicy, NodeURLError, OwnEndpoints, Resolver, system_resolver
from .transport.pools import NodePools, PoolFactory
from .transport.upstream import IdleWatchdog, make_pool

log = logging.getLogger("spotrelay.router")

MAX_CONTROL_BODY = 64 * 1024


@dataclass
class ControlResult:
    """A control-plane answer: HTTP status and JSON document."""

    status: int
    doc: Any


class RouterService:
    def __init__(
        self,
        cfg: RouterConfig,
        node_token: str,
        *,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
        stream_handler_factory: Callable[[ProxyRequest, Proxy], StreamHandler] | None = None,
        pool_factory: PoolFactory | None = None,
        metrics_dir: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.started_at = time.time()
        self.node_auth = ControlPlaneAuth(node_token)
        self.api_auth = DataPlaneAuth(cfg.auth.api_keys)
        self.netpolicy = make_netpolicy(cfg, resolver)
        self.registry = make_registry(cfg, clock, make_backend(cfg, self.netpolicy))
        self.metrics = RouterMetrics(shared_dir=metrics_dir)
        self.tracing = make_tracing(cfg.tracing)
        self.budget = RetryBudget(
            cfg.retry.budget_percent, cfg.retry.min_retry_concurrency, cfg.retry.budget_wait_s
        )
        # Which process answered: the same across requests on one keep-alive connection.
        self.router_id = f"{socket.gethostname()} pid {os.getpid()}"
        self.metrics.bind(self.registry, self.budget, backend=cfg.registry.backend,
                          backend_up=self.backend_up)  # fmt: skip
        self.registry.listeners.append(_log_node_event)
        pool_size = cfg.server.upstream_pool_size
        self.pools = NodePools(pool_factory or (lambda target: make_pool(target, pool_size)))
        self.registry.listeners.append(self.pools.on_node_event)
        self.watchdog = make_watchdog(cfg)
        self.client_watch = ClientWatch()
        self.proxy = make_proxy(
            cfg,
            self,
            clock,
            stream_handler_factory or resume_handler_factory(cfg.resume, self.metrics),
        )
        self.node_loss = NodeLoss(self.registry, self.metrics)
        self.watchdog.on_frozen = self.node_loss.frozen
        self.dataplane = make_dataplane(cfg, self.registry, clock)
        self.metrics_board = None
        if self.metrics.board is not None:
            self.metrics_board = Publisher(self.metrics.board, self.metrics.local_snapshot)
        self.health = HealthMonitor(
            self.registry,
            http_probe(cfg.health.probe_timeout_s, self.pools),
            probe_interval_s=cfg.health.probe_interval_s,
            probe_timeout_s=cfg.health.probe_timeout_s,
        )

    def _upkeep(self) -> list[SyncBackend | Ticker]:
        """The background parts (TTL expiry, Redis sync, probes...), in start order."""
        parts = (
            self.registry.backend,
            self.metrics_board,
            self.health,
            self.watchdog,
            self.client_watch,
        )
        return [part for part in parts if part is not None]

    def start(self) -> None:
        """Start background upkeep; once per worker process."""
        for part in self._upkeep():
            part.start()

    def stop(self) -> None:
        for part in self._upkeep():
            part.stop()
        self.tracing.shutdown()  # flushes the spans still batched

    def backend_up(self) -> bool:
        """Whether the registry backend is reachable (memory always is)."""
        return self.registry.backend.up

    def registry_state(self) -> str:
        """``memory``, ``redis`` (this view is the shared one) or ``redis-down`` (last view)."""
        return self.registry.backend.state

    # -- control plane -------------------------------------------------------------------

    def put_node(self, node_id: str, raw: bytes) -> ControlResult:
        if not valid_node_id(node_id):
            return _bad("node id must be 1-128 characters of letters, digits and ._:- ")
        if len(raw) > MAX_CONTROL_BODY:
            return ControlResult(413, error_doc(f"body larger than {MAX_CONTROL_BODY} bytes"))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _bad("body is not valid JSON")
        try:
            report = parse_report(body)
        except ProtocolError as exc:
            return _bad(str(exc))
        try:
            target = self.netpolicy.validate(report.url)
        except NodeURLError as exc:
            log.warning("refused registration of node %s: %s", node_id, exc)
            return _bad(str(exc))
        try:
            outcome = self.registry.apply(Upsert(node_id, report, target))
        except RegistryFull as exc:
            log.warning("refused registration of node %s: %s", node_id, exc)
            return ControlResult(
                429,
                error_doc(
                    f"{exc}; a new node is refused until one expires, is deleted, "
                    "or registry.max_nodes is raised"
                ),
            )
        if outcome.evicted is not None:
            log.warning(
                "registry full: forgot node %s, silent for %.1fs, to register node %s",
                outcome.evicted.id,
                self.registry.clock() - outcome.evicted.last_seen,
                node_id,
            )
        assert outcome.node is not None  # an upsert always has its node
        return ControlResult(200, self._node_ack(outcome.node, outcome.created).to_json())

    def drain_node(self, node_id: str) -> ControlResult:
        node = self.registry.apply(Drain(node_id)).node  # shared also when unknown here
        if node is None:
            return ControlResult(404, error_doc(f"node {node_id!r} is not registered"))
        return ControlResult(200, NodeDrain(node_id, node.in_flight).to_json())

    def drain_instance(self, instance_id: str) -> ControlResult:
        if not valid_instance_id(instance_id):
            return _bad(f"{instance_id!r} is not an EC2 instance id")
        matches = self.registry.apply(DrainInstance(instance_id)).matched
        if not matches:
            return ControlResult(404, error_doc(f"no node on instance {instance_id!r}"))
        nodes = tuple(DrainedNode(n.id, already, n.in_flight) for n, already in matches)
        return ControlResult(200, InstanceDrain(instance_id, nodes).to_json())

    def delete_node(self, node_id: str) -> ControlResult:
        node = self.registry.apply(Delete(node_id)).node  # shared also when unknown here
        if node is None:
            return ControlResult(404, error_doc(f"node {node_id!r} is not registered"))
        return ControlResult(200, NodeDeleted(node_id, node.in_flight).to_json())

    def list_nodes(self) -> ControlResult:
        return ControlResult(200, self.registry.snapshot().to_json())

    def _node_ack(self, node: Node, created: bool) -> NodeAck:
        return NodeAck(
            id=node.id,
            url=node.url,
            state=str(node.status),
            registered=created,
            in_flight=node.in_flight,
            ttl_s=self.registry.ttl_s,
        )

    # -- data plane helpers --------------------------------------------------------------

    def models_doc(self) -> dict[str, Any]:
        created = int(self.started_at)
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "spotrelay"}
            for m in self.registry.ready_models()
        ]
        return {"object": "list", "data": data}


def make_netpolicy(cfg: RouterConfig, resolver: Resolver) -> NetPolicy:
    """The node URL policy; the router's own listeners are refused (no request loops)."""
    ports = (cfg.server.port, cfg.server.control_port)
    own = OwnEndpoints(cfg.server.host, ports, resolver=resolver)
    return NetPolicy(cfg.registry.allowed_networks, resolver, own)


def make_registry(cfg: RouterConfig, clock: Callable[[], float], backend: SyncBackend) -> Registry:
    ejection = EjectionPolicy(
        consecutive_failures=cfg.health.consecutive_failures,
        base_ejection_s=cfg.health.base_ejection_s,
        max_ejection_s=cfg.health.max_ejection_s,
    )
    return Registry(
        cfg.registry.ttl_s,
        ejection,
        clock=clock,
        max_nodes=cfg.registry.max_nodes,
        backend=backend,
    )


def make_backend(cfg: RouterConfig, netpolicy: NetPolicy) -> SyncBackend:
    """The registry's sync backend: none for ``memory``, the Redis follower/writer for ``redis``."""
    if cfg.registry.backend != "redis":
        return MemoryBackend()
    from .registry.store import RedisStore
    from .registry.sync import RedisSync, redis_client
    from .settings import mask_password

    reg = cfg.registry
    assert reg.redis_url is not None  # validated by RouterConfig
    client = redis_client(
        reg.redis_url, reg.redis_password, reg.redis_timeout_s, ca_file=reg.redis_ca_file
    )
    store = RedisStore(client, reg.redis_key_prefix, reg.ttl_s)
    return RedisSync(
        netpolicy,
        store,
        where=mask_password(reg.redis_url),
        backoff_max_s=reg.redis_backoff_max_s,
    )


def make_watchdog(cfg: RouterConfig) -> IdleWatchdog:
    """Ticks often enough to notice a stall within a quarter of ``stall_floor_s``."""
    tick = min(1.0, cfg.timeouts.stream_idle_s / 4, cfg.hedge.stall_floor_s / 4)
    return IdleWatchdog(tick_s=max(0.05, tick), frozen_min_streams=cfg.hedge.frozen_min_streams)


def make_proxy(
    cfg: RouterConfig,
    svc: RouterService,
    clock: Callable[[], float],
    stream_handler_factory: Callable[[ProxyRequest, Proxy], StreamHandler],
) -> Proxy:
    """The proxy over the service's registry, pools, budget, metrics and watchdogs."""
    return Proxy(
        registry=svc.registry,
        pools=svc.pools,
        balancer=Balancer(
            policy=cfg.routing.policy,
            load_factor=cfg.routing.load_factor,
            load_slack=cfg.routing.load_slack,
        ),
        policy=RetryPolicy(
            cfg.retry.max_attempts, cfg.retry.backoff_base_ms, cfg.retry.backoff_max_ms
        ),
        budget=svc.budget,
        metrics=svc.metrics,
        timeouts=cfg.timeouts,
        routing=cfg.routing,
        access_log=cfg.server.access_log,
        clock=clock,
        watchdog=svc.watchdog,
        client_watch=svc.client_watch,
        stall=StallPolicy(
            enabled=cfg.hedge.enabled,
            stall_multiple=cfg.hedge.stall_multiple,
            stall_floor_s=cfg.hedge.stall_floor_s,
            max_per_stream=cfg.hedge.max_per_stream,
            frozen_min_streams=cfg.hedge.frozen_min_streams,
        ),
        stream_handler_factory=stream_handler_factory,
        assembled=assembled_answer,
    )


def make_dataplane(cfg: RouterConfig, registry: Registry, clock: Callable[[], float]) -> DataPlane:
    return DataPlane(
        registry,
        deadline_s=cfg.timeouts.request_deadline_s,
        no_capacity_wait_s=cfg.routing.no_capacity_wait_s,
        retry_after_s=cfg.routing.retry_after_s,
        max_form_parts=cfg.routing.max_form_parts,
        clock=clock,
        assemble_kinds=tuple(cfg.routing.assemble_non_streaming),
    )


def _bad(message: str) -> ControlResult:
    return ControlResult(400, error_doc(message))


def _log_node_event(event: NodeEvent, node: Node) -> None:
    if event in ("registered", "moved"):
        log.info(
            "node %s %s: %s serving %s (%s)",
            node.id,
            event,
            node.url,
            ",".join(sorted(node.models)),
            node.status,
        )
    elif event in ("deleted", "drained", "state", "unhealthy", "forgotten"):
        log.info("node %s %s (now %s, %d in flight)", node.id, event, node.status, node.in_flight)
