"""The agent's load metrics for target-tracking scaling: one PutMetricData per interval to
moto's CloudWatch (server mode), and a CloudWatch that hangs never delays a drain.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from spotrelay.agent.cloudwatch import KV_METRIC, QUEUE_METRIC, LoadPublisher, cloudwatch_client
from spotrelay.core.protocol import NodeLoad
from spotrelay.sim.loopback import wait_until
from spotrelay.sim.processes import ProcessGroup

from .support.agent_node import control, make_node, run_agent, spot_time, wait_state

REGION = "us-east-1"
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("fake_aws_credentials")]


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An endpoint that accepts connections and never answers: CloudWatch hanging."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for conn in held:
            conn.close()
        sock.close()


def datapoints(endpoint: str, pool: str, name: str) -> list[dict[str, Any]]:
    cw = boto3.client("cloudwatch", region_name=REGION, endpoint_url=endpoint)
    now = time.time()
    stats = cw.get_metric_statistics(
        Namespace="spotrelay",
        MetricName=name,
        Dimensions=[{"Name": "Pool", "Value": pool}],
        StartTime=now - 600,
        EndTime=now + 60,
        Period=60,
        Statistics=["Average", "SampleCount"],
    )
    return stats["Datapoints"]


def publisher(endpoint: str, pool: str, load: NodeLoad | None, **kw: Any) -> LoadPublisher:
    return LoadPublisher(
        namespace="spotrelay",
        pool=pool,
        interval_s=kw.get("interval_s", 60),
        load_fn=lambda: load,
        client_fn=lambda: cloudwatch_client(REGION, endpoint, kw.get("timeout_s", 2)),
        stop=threading.Event(),
    )


def test_one_call_carries_queue_and_kv_cache_per_pool(moto_endpoint: str) -> None:
    pub = publisher(moto_endpoint, "pool-a", NodeLoad(running=3, waiting=2, kv_cache_usage=0.41))
    assert pub.publish_once()
    (queue,) = datapoints(moto_endpoint, "pool-a", QUEUE_METRIC)
    (kv,) = datapoints(moto_endpoint, "pool-a", KV_METRIC)
    assert (queue["Average"], queue["SampleCount"]) == (5.0, 1.0)
    assert kv["Average"] == 41.0
    assert publisher(moto_endpoint, "pool-a", None).publish_once() is False  # not serving


def test_a_hanging_cloudwatch_costs_a_datapoint_not_the_agent(blackhole: str) -> None:
    pub = publisher(blackhole, "pool-b", NodeLoad(running=1), timeout_s=0.5)
    started = time.monotonic()
    assert pub.publish_once() is False
    assert time.monotonic() - started < 5  # bounded by the timeouts, one attempt
    assert pub.failures == 1


def test_agent_publishes_and_still_drains_in_time_when_cloudwatch_hangs(
    procs: ProcessGroup, logdir: Path, router, moto_endpoint: str, blackhole: str
) -> None:
    # A healthy CloudWatch: the agent's datapoints arrive.
    good = make_node(
        procs, logdir, router, "m-cw-good", instance_id="i-0c10c10c10c10c101",
        cloudwatch={"enabled": True, "pool": "pool-good", "interval_s": 0.5,
                    "region": REGION, "endpoint_url": moto_endpoint},
    )  # fmt: skip
    run_agent(procs, logdir, good)
    wait_state(router, good.node_id, "ready")
    wait_until(
        lambda: bool(datapoints(moto_endpoint, "pool-good", QUEUE_METRIC)),
        timeout=20,
        what="the agent's QueuePerNode datapoint",
    )

    # CloudWatch hangs on every call: the spot notice still drains before the deadline.
    stuck = make_node(
        procs, logdir, router, "m-cw-stuck", instance_id="i-0c10c10c10c10c102",
        cloudwatch={"enabled": True, "pool": "pool-stuck", "interval_s": 0.2,
                    "timeout_s": 30, "region": REGION, "endpoint_url": blackhole},
    )  # fmt: skip
    run_agent(procs, logdir, stuck)
    wait_state(router, stuck.node_id, "ready")
    t0 = time.time()
    control(stuck.imds, "spot", {"action": "terminate", "lead_s": 6})
    deadline = spot_time(stuck.imds)
    assert wait_state(router, stuck.node_id, "draining", timeout=5) - t0 < 2
    assert wait_state(router, stuck.node_id, None, timeout=10) < deadline
