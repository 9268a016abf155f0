"""What the simulator saw: request counts, in-flight requests, recent /v1 requests,
and the vLLM-named Prometheus metrics.

Router and agent tests read ``GET /_control/stats`` to prove where requests
went (by ``X-Request-ID``); ``/metrics`` is what the agent scrapes for load.
Both are computed when asked, so serving a token costs nothing here.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .engine import Engine

RECENT = 200


@dataclass
class RequestRecord:
    """One /v1/* request as the stats API reports it."""

    request_id: str | None
    method: str
    path: str
    started: float = field(default_factory=time.time)
    model: str | None = None
    stream: bool | None = None
    status: int | None = None
    # completed | stopped | error | rejected | dropped | hung | aborted | unhealthy
    outcome: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    duration_ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """Totals per path, the in-flight set and a ring of the last :data:`RECENT` /v1 requests."""

    def __init__(self) -> None:
        self.total = 0
        self.per_path: Counter[str] = Counter()
        self.active: set[int] = set()
        self._records: dict[int, RequestRecord] = {}
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT)

    def seen(self, path: str) -> None:
        self.total += 1
        self.per_path[path] += 1

    def start(self, record: RequestRecord) -> None:
        self.active.add(id(record))
        self._records[id(record)] = record

    def finish(self, record: RequestRecord) -> None:
        record.duration_ms = round((time.time() - record.started) * 1000.0, 3)
        self.active.discard(id(record))
        self._records.pop(id(record), None)
        self.recent.append(record)

    def reset(self) -> None:
        self.total = 0
        self.per_path.clear()
        self.recent.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_total": self.total,
            "per_path": dict(self.per_path),
            "active": len(self.active),
            "active_requests": [r.to_json() for r in self._records.values()],
            "recent": [r.to_json() for r in self.recent],
        }


class VllmCollector:
    """Exposes the engine's state under vLLM's metric names and labels."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self):  # prometheus_client collector protocol
        eng = self.engine
        labels = ["model_name", "engine"]
        values = [eng.settings.model, "0"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            eng.scheduler.running,
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            eng.scheduler.waiting,
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            eng.kv_cache_usage,
        )
        yield counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", eng.prompt_tokens_total
        )
        yield counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            eng.generated_tokens(time.monotonic()),  # asyncio's loop clock
        )
        cache = eng.prefix_cache
        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            cache.queries_total,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            cache.hits_total,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        for reason, count in eng.finished.items():
            success.add_metric([*values, reason], count)
        yield success


def metrics_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VllmCollector(engine))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
