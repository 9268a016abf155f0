"""The agent's own Prometheus metrics (``spotrelay_agent_*``) and their HTTP endpoint.

A private registry keeps the exposition to what the agent does (plus the
process collector for its own RSS and CPU), and lets tests build several
agents in one interpreter.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from spotrelay.core.config import ConfigError

from .hoststats import HostStats

log = logging.getLogger("spotrelay.agent.metrics")

PREFIX = "spotrelay_agent_"
UNHEALTHY_REASONS = ("no_answer", "stalled", "error", "process_gone", "no_model")


class AgentMetrics:
    """Every metric the agent exports, in one place so the docs can list them."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._declare_drain_metrics()
        self._declare_engine_metrics()
        self._declare_call_metrics()
        self._declare_host_metrics()
        self._server: Any = None

    def _counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(PREFIX + name, doc, labels, registry=self.registry)

    def _declare_drain_metrics(self) -> None:
        """IMDS events, IMDS errors and the drains they lead to."""
        self.events = self._counter("events_total", "Distinct IMDS events seen, by type", "type")
        self.imds_errors = self._counter(
            "imds_errors_total",
            "Failed IMDS calls, by kind (timeout, connect, throttled, server, unauthorized...)",
            "kind",
        )
        self.drains = self._counter("drains_total", "Drains started, by first reason", "reason")
        self.drain_duration = Histogram(
            PREFIX + "drain_duration_seconds",
            "From drain start to the last step done",
            buckets=(1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1800),
            registry=self.registry,
        )
        self.drain_deadline_missed = self._counter(
            "drain_deadline_missed_total",
            "Drains whose deadline came before the engine was idle (work was cut off)",
        )
        self.draining = self._gauge("draining", "1 while a drain is under way")

    def _declare_engine_metrics(self) -> None:
        """The engine's health as the agent reports it."""
        self.engine_ready = self._gauge(
            "engine_ready", "1 when the engine is healthy and serves the model"
        )
        self.engine_process = self._gauge(
            "engine_process_alive",
            "Engine process (psutil watch): 1 running, 0 gone, -1 not watched or not found yet",
        )
        self.engine_process.set(-1)
        self.engine_unhealthy = self._counter(
            "engine_unhealthy_total",
            "Times the node was reported unhealthy, by reason (no_answer: the health check "
            "timed out or was refused; stalled: requests running, no token generated; error; "
            "process_gone; no_model)",
            "reason",
        )
        for reason in UNHEALTHY_REASONS:  # a first report must be an increase, not a new series
            self.engine_unhealthy.labels(reason)

    def _declare_call_metrics(self) -> None:
        """Calls the agent makes: heartbeats, lifecycle and health calls to AWS, the webhook."""
        self.heartbeats = self._counter(
            "heartbeats_total", "Acknowledged heartbeats, by router", "router"
        )
        self.heartbeat_failures = self._counter(
            "heartbeat_failures_total", "Failed heartbeats, by router", "router"
        )
        self.lifecycle_actions = self._counter(
            "lifecycle_actions_total",
            "CompleteLifecycleAction outcomes (completed, no_active_action, failed)",
            "result",
        )
        self.launch_hook = self._counter(
            "launch_hook_total",
            "Launch lifecycle hook completions by action (CONTINUE, ABANDON) and outcome "
            "(completed, no_active_action, failed)",
            "action",
            "outcome",
        )
        self.launch_heartbeats = self._counter(
            "launch_hook_heartbeats_total",
            "RecordLifecycleActionHeartbeat calls while the model loads (ok, failed)",
            "result",
        )
        self.self_heal = self._counter(
            "self_heal_total",
            "Self-healing steps: triggered, set_unhealthy (SetInstanceHealth done), failed",
            "result",
        )
        self.webhook_failures = self._counter("webhook_failures_total", "Webhook POSTs that failed")

    def _declare_host_metrics(self) -> None:
        """The host: start-up milestones, CPU, memory and GPU use (not in the node protocol)."""
        self.startup = self._gauge(
            "startup_seconds",
            "Seconds from host boot to each start-up milestone "
            "(agent_started, engine_healthy, registered)",
            "milestone",
        )
        self.host_cpu = self._gauge("host_cpu_percent", "Host CPU use")
        self.host_mem = self._gauge("host_memory_used_bytes", "Host memory in use")
        self.gpu_util = self._gauge("gpu_utilization_percent", "GPU utilisation (NVML)", "gpu")
        self.gpu_mem = self._gauge("gpu_memory_used_bytes", "GPU memory in use (NVML)", "gpu")
        self.gpu_temp = self._gauge("gpu_temperature_celsius", "GPU temperature (NVML)", "gpu")

    def observe_host(self, stats: HostStats) -> None:
        self.host_cpu.set(stats.cpu_percent)
        self.host_mem.set(stats.memory_used_bytes)
        for gpu in stats.gpus:
            label = str(gpu.index)
            self.gpu_util.labels(label).set(gpu.utilization_percent)
            self.gpu_mem.labels(label).set(gpu.memory_used_bytes)
            if gpu.temperature_c is not None:
                self.gpu_temp.labels(label).set(gpu.temperature_c)

    def serve(self, host: str, port: int) -> None:
        """Start ``/metrics`` on ``host:port`` in a daemon thread (port 0: disabled)."""
        if not port:
            return
        try:
            result = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError("metrics.port", f"cannot listen: {exc.strerror}", port) from None
        self._server = result[0] if isinstance(result, tuple) else None
        log.info("metrics on http://%s:%s/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
