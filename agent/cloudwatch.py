"""The engine's load to CloudWatch, for the gpu-pool's target-tracking scaling policy.

Why agents and not routers: the agent reads the load straight from its own
engine (vLLM's ``num_requests_running + waiting`` and KV-cache usage), one
datapoint per node, so CloudWatch's ``Average`` over the pool *is* the load per
node that target tracking wants. Every router sees every node, so N routers
would publish N copies of the same fleet total (or need a leader), and their
view lags one heartbeat behind the engine.

One ``PutMetricData`` per interval carries both metrics. The publisher is its
own daemon thread with short timeouts and one attempt, and the load
is read from the agent's last probe (no I/O on the drain's path): a
CloudWatch outage costs datapoints, never a drain. A node that is draining or
not serving publishes nothing, so a leaving node does not drag the average
down and trigger a scale-in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from spotrelay.core.config import ConfigError
from spotrelay.core.protocol import NodeLoad
from spotrelay.core.ticker import Ticker

from .autoscaling_api import AutoScalingAPI

if TYPE_CHECKING:
    from .imds import Identity
    from .settings import AgentConfig

log = logging.getLogger("spotrelay.agent")

QUEUE_METRIC = "QueuePerNode"  # requests running + waiting on the node's engine
KV_METRIC = "KvCacheUsage"  # percent of the KV cache in use


def metric_data(pool: str, load: NodeLoad) -> list[dict[str, Any]]:
    dims = [{"Name": "Pool", "Value": pool}]
    return [
        {
            "MetricName": QUEUE_METRIC,
            "Dimensions": dims,
            "Value": float(load.running + load.waiting),
            "Unit": "Count",
        },
        {
            "MetricName": KV_METRIC,
            "Dimensions": dims,
            "Value": round(100.0 * load.kv_cache_usage, 2),
            "Unit": "Percent",
        },
    ]


class CloudWatchAPI(AutoScalingAPI):
    """CloudWatch's Query API (``monitoring``) through the agent's SigV4 client: no boto3."""

    service = "monitoring"
    api_version = "2010-08-01"

    def put_metric_data(self, namespace: str, data: list[dict[str, Any]]) -> Any:
        return self.call("PutMetricData", query_params(namespace, data))


def query_params(namespace: str, data: list[dict[str, Any]]) -> dict[str, str]:
    """``PutMetricData`` as Query parameters (``MetricData.member.N.Dimensions.member.M``)."""
    params = {"Namespace": namespace}
    for i, datum in enumerate(data, 1):
        prefix = f"MetricData.member.{i}."
        params[prefix + "MetricName"] = datum["MetricName"]
        params[prefix + "Value"] = repr(float(datum["Value"]))
        params[prefix + "Unit"] = datum["Unit"]
        for j, dim in enumerate(datum["Dimensions"], 1):
            params[f"{prefix}Dimensions.member.{j}.Name"] = dim["Name"]
            params[f"{prefix}Dimensions.member.{j}.Value"] = dim["Value"]
    return params


def cloudwatch_client(region: str | None, endpoint_url: str | None, timeout_s: float) -> Any:
    """One attempt per call, short timeouts: a lost datapoint beats a late one."""
    return CloudWatchAPI(region, endpoint_url=endpoint_url, attempts=1, timeout_s=timeout_s)


class LoadPublisher(Ticker):
    """Publishes ``load_fn()`` every ``interval_s`` until ``stop`` is set."""

    name = "cloudwatch"

    def __init__(
        self,
        *,
        namespace: str,
        pool: str,
        interval_s: float,
        load_fn: Callable[[], NodeLoad | None],
        client_fn: Callable[[], Any],
        stop: threading.Event,
    ) -> None:
        super().__init__(interval_s, stop=stop)
        self.namespace = namespace
        self.pool = pool
        self.load_fn = load_fn
        self.client_fn = client_fn
        self._client: Any = None
        self._failing = False
        self.published = 0  # successful PutMetricData calls
        self.failures = 0

    def tick(self) -> None:
        self.publish_once()

    def publish_once(self) -> bool:
        load = self.load_fn()
        if load is None:
            return False
        try:
            if self._client is None:
                self._client = self.client_fn()
            self._client.put_metric_data(self.namespace, metric_data(self.pool, load))
        except Exception as exc:  # any outage: skip this datapoint, keep serving and draining
            self.failures += 1
            if not self._failing:
                log.warning("CloudWatch PutMetricData failed (will keep trying): %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("CloudWatch PutMetricData works again")
        self._failing = False
        self.published += 1
        return True


def load_publisher(
    cfg: AgentConfig,
    identity: Identity,
    load_fn: Callable[[], NodeLoad | None],
    stop: threading.Event,
) -> LoadPublisher:
    """The publisher for an agent's ``cloudwatch`` section."""
    cw = cfg.cloudwatch
    pool = cw.pool or cfg.lifecycle.asg_name
    if not pool:
        raise ConfigError("cloudwatch.pool", "required when lifecycle.asg_name is not set")
    region = cw.region or cfg.lifecycle.region or identity.region
    return LoadPublisher(
        namespace=cw.namespace,
        pool=pool,
        interval_s=cw.interval_s,
        load_fn=load_fn,
        client_fn=lambda: cloudwatch_client(region, cw.endpoint_url, cw.timeout_s),
        stop=stop,
    )
