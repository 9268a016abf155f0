"""Prometheus metrics, all named ``spotrelay_router_*``.

Counters and histograms are updated on the request path; per-node gauges are
computed from the registry at scrape time by a custom collector, so a node
that leaves the fleet (spot reclaim) leaves no stale series behind. Labels
stay bounded: a model is a label value only once a node has served it, and
at most ``MAX_MODEL_LABELS`` of them; anything else a client typed becomes
``model="other"``. Nodes are labels only while registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .metrics_share import SnapshotBoard
from .registry.state import Registry
from .retry import RetryBudget

PREFIX = "spotrelay_router_"
MAX_MODEL_LABELS = 200
OTHER_MODEL = "other"
NODE_EVENTS = (
    "registered", "expired", "deleted", "drained", "ejected", "restored", "moved", "unhealthy",
    "frozen", "forgotten",
)  # fmt: skip

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip


class RouterMetrics:
    """The router's metrics; with ``shared_dir``, summed over every worker of the router.

    ``shared_dir`` is the multiprocess directory the gunicorn master made
    (:mod:`spotrelay.router.metrics_share` says why and how); prometheus_client
    must have been told about it (``PROMETHEUS_MULTIPROC_DIR``) before this
    object is created.
    """

    def __init__(self, shared_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.board = SnapshotBoard(shared_dir) if shared_dir else None
        # What a scrape renders: this registry, or (shared) every worker's files.
        self.scrape_registry = self.registry
        if shared_dir:
            self.scrape_registry = CollectorRegistry()
            MultiProcessCollector(self.scrape_registry, path=shared_dir)
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Data-plane requests by model and HTTP status returned to the client",
            ["model", "status"],
            registry=r,
        )
        self.attempts = Counter(
            PREFIX + "upstream_attempts_total",
            "Upstream attempts by outcome (ok, or the failure reason)",
            ["outcome"],
            registry=r,
        )
        self.retries = Counter(
            PREFIX + "retries_total",
            "Retries on another node, by the reason of the failed attempt",
            ["reason"],
            registry=r,
        )
        self.budget_exhausted = Counter(
            PREFIX + "retry_budget_exhausted_total",
            "Retries given up: no retry-budget slot freed within retry.budget_wait_s",
            registry=r,
        )
        self.ejections = Counter(
            PREFIX + "ejections_total", "Passive-health ejections of nodes", registry=r
        )
        self.node_events = Counter(
            PREFIX + "node_events_total",
            "Registry events (registered, expired, deleted, drained, ejected, frozen, "
            "unhealthy, restored, moved, state)",
            ["event"],
            registry=r,
        )
        for event in NODE_EVENTS:  # a first expiry must be an increase, not a new series
            self.node_events.labels(event)
        self.node_lost_cuts = Counter(
            PREFIX + "node_lost_cuts_total",
            "Open requests the router cut because their node was lost, by the registry event "
            "(expired, deleted, unhealthy, ejected, frozen); streams resume, others are retried",
            ["event"],
            registry=r,
        )
        self.hedges = Counter(
            PREFIX + "hedges_total",
            "Stalled streams continued on another node beside the original: started, and "
            "which side delivered first (original_won, continuation_won); started minus both "
            "is hedges that could not open or ended with their stream",
            ["outcome"],
            registry=r,
        )
        self.capacity_waits = Counter(
            PREFIX + "capacity_waits_total",
            "Requests that found no ready node and waited, by outcome (served, timed_out)",
            ["outcome"],
            registry=r,
        )
        self.stream_breaks = Counter(
            PREFIX + "stream_breaks_total",
            "Streams whose upstream broke after data reached the client, by reason",
            ["reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            PREFIX + "client_disconnects_total",
            "Streams the client abandoned (the upstream request was aborted)",
            registry=r,
        )
        self.resumes = Counter(
            PREFIX + "stream_resumes_total",
            "Streams broken after their first byte, by resume outcome: ok (continued on "
            "another node, or nothing was left to generate), failed (a continuation could "
            "not start; another may follow), exhausted, not_resumable, disabled, no_capacity "
            "(no untried node within routing.no_capacity_wait_s), deadline_exceeded",
            ["outcome"],
            registry=r,
        )
        self.resumed_tokens = Counter(
            PREFIX + "resumed_tokens_total",
            "Tokens generated before a break and carried into a continuation's prompt",
            registry=r,
        )
        self.resume_seam = Histogram(
            PREFIX + "resume_seam_seconds",
            "Resumed streams: break to the first new content relayed to the client",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.assembled = Counter(
            PREFIX + "assembled_total",
            "Non-streaming requests served from a stream (routing.assemble_non_streaming), by "
            "outcome: complete, resumed (a break resumed), restarted (begun again on another "
            "node), failed (answered 502), client_disconnect",
            ["outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            PREFIX + "upstream_latency_seconds",
            "Successful attempt: request sent to response received "
            "(whole body; first event for streams)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            PREFIX + "ttft_seconds",
            "Streams: request received to first event relayed to the client",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._ok = self.attempts.labels("ok")
        self._local: Callable[[], dict] = lambda: {
            "in_flight": {}, "active_requests": 0, "active_retries": 0, "backend_up": True
        }  # fmt: skip
        self._served: Callable[[str], bool] = lambda model: False
        self._model_labels: set[str] = set()
        # (model label, status) -> its requests_total child. Both labels are bounded
        # (MAX_MODEL_LABELS names, HTTP statuses); prometheus_client's labels()
        # validates, converts and locks on every call, and every request counts once.
        self._request_counts: dict[tuple[str, int], Counter] = {}

    def model_label(self, model: str) -> str:
        """``model`` if some node has served it (up to MAX_MODEL_LABELS names), else ``other``."""
        labels = self._model_labels
        if model in labels:
            return model
        if len(labels) < MAX_MODEL_LABELS and self._served(model):
            labels.add(model)
            return model
        return OTHER_MODEL

    def count_request(self, model_label: str, status: int) -> None:
        """One data-plane request answered with ``status`` (``model_label``: :meth:`model_label`
        or ``none``)."""
        key = (model_label, status)
        child = self._request_counts.get(key)
        if child is None:
            child = self._request_counts[key] = self.requests.labels(model_label, str(status))
        child.inc()

    def attempt_ok(self) -> None:
        self._ok.inc()

    def bind(
        self,
        registry: Registry,
        budget: RetryBudget,
        *,
        backend: str = "memory",
        backend_up: Callable[[], bool] = lambda: True,
    ) -> None:
        """Expose registry, backend and budget state at scrape time; count registry events."""

        def local() -> dict:
            return {
                "in_flight": {n.id: n.in_flight for n in registry.nodes() if n.in_flight},
                "active_requests": budget.active_requests,
                "active_retries": budget.active_retries,
                "backend_up": backend_up(),
            }

        self._local = local
        self.scrape_registry.register(_StateCollector(registry, backend, self.snapshots))
        registry.listeners.append(self._on_node_event)
        self._served = lambda model: model in registry.catalog

    def local_snapshot(self) -> dict:
        """This worker's scrape-time gauges: what it publishes for the others (shared mode)."""
        return self._local()

    def snapshots(self) -> list[dict]:
        """This worker's live gauges, then the other workers' published ones (shared mode)."""
        others = self.board.others() if self.board is not None else []
        return [self.local_snapshot(), *others]

    def _on_node_event(self, event: str, node: object) -> None:
        self.node_events.labels(event).inc()
        if event in ("ejected", "frozen"):
            self.ejections.inc()

    def render(self) -> bytes:
        return generate_latest(self.scrape_registry)


Snapshots = Callable[[], list[dict]]


class _StateCollector(Collector):
    """Node states from this worker's view (the shared one); the rest summed over workers.

    In-flight series exist only for nodes in the view, so a reclaimed node's
    series ends with it, whatever another worker's snapshot still says. One
    collector for every scrape-time gauge, so a scrape reads the other
    workers' snapshots once.
    """

    def __init__(self, registry: Registry, backend: str, snapshots: Snapshots) -> None:
        self._registry = registry
        self._backend = backend
        self._snapshots = snapshots

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily(
            PREFIX + "nodes", "Registered nodes by state", labels=["state"]
        )
        for state, count in self._registry.counts_by_status().items():
            by_state.add_metric([state], count)
        yield by_state
        yield _model_nodes(self._registry)
        snaps = self._snapshots()
        in_flight = GaugeMetricFamily(
            PREFIX + "node_in_flight",
            "Requests this router (all its workers) has open on each node",
            labels=["node", "state"],
        )
        for node in self._registry.nodes():
            total = sum(s["in_flight"].get(node.id, 0) for s in snaps)
            in_flight.add_metric([node.id, str(node.status)], total)
        yield in_flight
        yield _gauge(PREFIX + "active_requests", "Data-plane requests in progress",
                     sum(s["active_requests"] for s in snaps))  # fmt: skip
        yield _gauge(PREFIX + "active_retries", "Retry attempts in progress",
                     sum(s["active_retries"] for s in snaps))  # fmt: skip
        backend_up = GaugeMetricFamily(
            PREFIX + "registry_backend_up",
            "1 while every worker of this router reaches its registry backend (memory: always)",
            labels=["backend"],
        )
        up = all(s["backend_up"] for s in snaps)
        backend_up.add_metric([self._backend], 1.0 if up else 0.0)
        yield backend_up


def _model_nodes(registry: Registry) -> GaugeMetricFamily:
    """Nodes by model, state and purchase option (the heartbeat's ``lifecycle`` label).

    Every model a node has served since start keeps a ``ready`` series, 0 once
    its last node is gone, so "no ready node for a model" is an alert on a value
    rather than on a missing series.
    """
    family = GaugeMetricFamily(
        PREFIX + "model_nodes",
        "Registered nodes by model, state and lifecycle (spot, on-demand, unknown)",
        labels=["model", "state", "lifecycle"],
    )
    counts: dict[tuple[str, str, str], int] = {}
    for node in registry.nodes():
        lifecycle = node.labels.get("lifecycle") or "unknown"
        for model in node.models:
            key = (model, str(node.status), lifecycle)
            counts[key] = counts.get(key, 0) + 1
    ready = {model for model, state, _ in counts if state == "ready"}
    for model in set(registry.catalog.models()) - ready:
        counts[(model, "ready", "unknown")] = 0
    for key, count in sorted(counts.items()):
        family.add_metric(list(key), count)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family
