"""``spotrelay status`` per instance, and ``spotrelay up``'s wait for ready nodes.

moto in server mode holds a GPU Auto Scaling group with on-demand and spot
instances; a real router under gunicorn has some of them registered. moto
answers ``DescribeScalingActivities`` with an empty list, so the tests' AWS
front (tests/support's MotoFront) answers it with activities in the shape of
the Auto Scaling API reference and forwards everything else to moto.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from spotrelay.deploy.pool_status import classify_activity, join_instances
from spotrelay.deploy.wait import wait_ready
from tests.support import (
    ROUTER_TOKEN,
    MotoFront,
    moto_server,
    register_node,
    scaling_activities_xml,
    start_router,
)
from tests.support.aws import client
from tests.support.deploy import cli, make_group, write_yaml

pytestmark = pytest.mark.timeout(180)

# DescribeScalingActivities entries as the API returns them (JSON field names of
# the Auto Scaling API reference; the CLI prints the same shape).
ACTIVITIES = [
    {
        "ActivityId": "9d2b1a2e-5c1f-4c8e-9f51-0a6c1f0b7e11",
        "AutoScalingGroupName": "st-gpu",
        "Description": "Terminating EC2 instance: i-0feedfacefeedface",
        "Cause": "At 2026-11-29T18:02:11Z an instance was taken out of service in response "
        "to an EC2 Spot Instance interruption notice.",
        "StartTime": "2026-11-29T18:02:12.081Z",
        "EndTime": "2026-11-29T18:04:13Z",
        "StatusCode": "Successful",
        "Progress": 100,
        "Details": '{"Subnet ID":"subnet-0aaaaaaaaaaaaaaaa","Availability Zone":"us-east-1a"}',
    },
    {
        "ActivityId": "4e1c7b0d-2a9f-4b7e-8d0c-3f5a6b7c8d91",
        "AutoScalingGroupName": "st-gpu",
        "Description": "Launching a new EC2 instance: i-0abcabcabcabcabca",
        "Cause": "At 2026-11-29T18:02:11Z an instance was started in response to a difference "
        "between desired and actual capacity, increasing the capacity from 1 to 2.",
        "StartTime": "2026-11-29T18:02:13.542Z",
        "EndTime": "2026-11-29T18:02:45Z",
        "StatusCode": "Successful",
        "Progress": 100,
        "Details": '{"Subnet ID":"subnet-0aaaaaaaaaaaaaaaa","Availability Zone":"us-east-1a"}',
    },
]


def activities_xml(form: dict[str, str]) -> tuple[int, str]:
    group = form.get("AutoScalingGroupName")
    return scaling_activities_xml([a for a in ACTIVITIES if a["AutoScalingGroupName"] == group])


class ActivitiesFront(MotoFront):
    """moto, with DescribeScalingActivities answered from :data:`ACTIVITIES`."""

    def answer(self, form: dict[str, str]) -> tuple[int, str] | None:
        if form.get("Action") == "DescribeScalingActivities":
            return activities_xml(form)
        return None


@pytest.fixture
def front() -> Iterator[ActivitiesFront]:
    with moto_server() as moto:
        f = ActivitiesFront(moto)
        try:
            yield f
        finally:
            f.close()


def add_spot_instance(endpoint: str, group: str) -> str:
    ec2 = client("ec2", endpoint)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reply = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
        InstanceMarketOptions={"MarketType": "spot"},
        Placement={"AvailabilityZone": "us-east-1b"},
    )  # fmt: skip
    iid = reply["Instances"][0]["InstanceId"]
    asg = client("autoscaling", endpoint)
    asg.update_auto_scaling_group(AutoScalingGroupName=group, MaxSize=5)
    asg.attach_instances(AutoScalingGroupName=group, InstanceIds=[iid])
    return iid


def status_config(
    tmp_path: Path, router_url: str, endpoint: str, asg: str = "st-gpu", **status: object
) -> Path:
    return write_yaml(
        tmp_path / "deploy.yaml",
        {
            "deployment": {"region": "us-east-1"},
            "status": {
                "router_url": router_url,
                "node_token": ROUTER_TOKEN,
                "asg_name": asg,
                "aws_endpoint_url": endpoint,
                **status,
            },
        },
    )


def row_of(text: str, iid: str) -> str:
    """The instance's row in the autoscaling group section (the router section is above)."""
    group = text[text.index("autoscaling group") :]
    return next(line for line in group.splitlines() if line.strip().startswith(iid))


def test_status_per_instance_spot_and_on_demand(
    tmp_path: Path, procs, logdir: Path, front: ActivitiesFront
) -> None:
    on_demand = make_group(front.moto, "st-gpu", desired=2)
    spot = add_spot_instance(front.moto, "st-gpu")
    router = start_router(procs, logdir)
    register_node(
        router.control_url, ROUTER_TOKEN, spot, "http://127.0.0.1:8000", "m", instance_id=spot
    )
    register_node(
        router.control_url, ROUTER_TOKEN, on_demand[0], "http://127.0.0.1:8001", "m",
        state="draining", instance_id=on_demand[0],
    )  # fmt: skip
    deploy = status_config(tmp_path, router.control_url, front.url, never_registered_after_s=0)

    proc = cli("status", "--config", str(deploy))
    text = proc.stdout
    assert proc.returncode == 0, text + proc.stderr  # one node is ready
    assert "desired=3" in text and "ready=1" in text
    spot_row = row_of(text, spot)
    assert "spot" in spot_row.split() and "g5.xlarge" in spot_row and "us-east-1b" in spot_row
    assert "InService" in spot_row and "Healthy" in spot_row and "ready" in spot_row
    draining_row = row_of(text, on_demand[0])
    assert "on-demand" in draining_row and "draining" in draining_row
    assert "never registered" not in draining_row
    assert "never registered" in row_of(text, on_demand[1])
    # The group's last scaling activities, spot interruptions marked.
    assert "SPOT Terminating EC2 instance: i-0feedfacefeedface" in text
    assert "Launching a new EC2 instance: i-0abcabcabcabcabca" in text
    assert "SPOT Launching" not in text

    doc = json.loads(cli("status", "--config", str(deploy), "--json").stdout)
    assert doc["ready"] == 1
    markets = {i["id"]: i["market"] for i in doc["instances"]}
    assert markets == {spot: "spot", on_demand[0]: "on-demand", on_demand[1]: "on-demand"}
    assert [a["spot_interruption"] for a in doc["scaling_activities"]] == [True, False]


def test_status_exits_non_zero_when_no_node_is_ready(
    tmp_path: Path, procs, logdir: Path, front: ActivitiesFront
) -> None:
    (iid,) = make_group(front.moto, "st-none", desired=1)  # moto's state is per process
    router = start_router(procs, logdir)
    deploy = status_config(tmp_path, router.control_url, front.url, "st-none")  # the hook's 1200 s
    proc = cli("status", "--config", str(deploy))
    assert proc.returncode == 1
    assert "no node is ready" in proc.stderr
    assert "never registered" not in row_of(proc.stdout, iid)  # young: still starting
    register_node(
        router.control_url, ROUTER_TOKEN, iid, "http://127.0.0.1:8000", "m", instance_id=iid
    )
    assert cli("status", "--config", str(deploy)).returncode == 0


# -- pure parts ----------------------------------------------------------------------------


def test_join_matches_router_nodes_by_instance_id_or_node_id() -> None:
    instances = [{"id": "i-1"}, {"id": "i-2"}, {"id": "i-3"}]
    details = {k: {"market": "spot", "launched_at": 1000.0} for k in ("i-1", "i-2", "i-3")}
    nodes = [
        {"id": "gpu-a", "instance_id": "i-1", "state": "ready"},
        {"id": "i-2", "state": "draining"},
    ]
    rows = join_instances(instances, details, nodes, never_after_s=600, now=1500.0)
    assert [r["router_state"] for r in rows] == ["ready", "draining", None]
    assert [r["note"] for r in rows] == ["", "", ""]  # 500 s old: not yet suspicious
    rows = join_instances(instances, details, nodes, never_after_s=600, now=1700.0)
    assert [r["note"] for r in rows] == ["", "", "never registered"]
    unknown = join_instances(instances, details, None, never_after_s=0, now=1700.0)
    assert {r["router_state"] for r in unknown} == {"unknown"} and not any(
        r["note"] for r in unknown
    )  # no router answer: no verdict


def test_activity_classification() -> None:
    assert classify_activity(ACTIVITIES[0])["spot_interruption"]
    assert not classify_activity(ACTIVITIES[1])["spot_interruption"]
    rebalance = {"Description": "Terminating EC2 instance: i-1", "Cause": "At 2026-11-29T18:00:00Z"
                 " an instance was taken out of service in response to an EC2 instance rebalance"
                 " recommendation."}  # fmt: skip
    assert classify_activity(rebalance)["spot_interruption"]


def fake_report(ready: int, desired: int, errors: list[str] | None = None) -> SimpleNamespace:
    rows = [{"lifecycle_state": "InService", "router_state": "ready", "note": ""}] * ready
    rows += [{"lifecycle_state": "Pending:Wait", "router_state": None, "note": ""}] * (
        desired - ready
    )
    return SimpleNamespace(desired=desired, ready=ready, instances=rows, errors=errors or [])


def test_wait_ready_reports_progress_until_done() -> None:
    reports = iter([fake_report(0, 2), fake_report(0, 2), fake_report(1, 2), fake_report(2, 2)])
    now = [0.0]
    lines: list[str] = []

    def sleep(s: float) -> None:
        now[0] += s

    ok, last = wait_ready(
        lambda: next(reports), timeout_s=100, interval_s=10,
        echo=lines.append, clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    assert ok and last.ready == 2
    assert len(lines) == 3  # printed when the picture changes, not on every poll
    assert "ready 0/2" in lines[0] and "Pending:Wait 2" in lines[0]
    assert "ready 1/2" in lines[1] and "router: ready 1" in lines[1]
    assert lines[2].startswith("[   30s] ready 2/2")


def test_wait_ready_times_out() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    lines: list[str] = []
    ok, last = wait_ready(
        lambda: fake_report(1, 2), timeout_s=125, interval_s=10,
        echo=lines.append, clock=lambda: now[0], sleep=sleep,
    )  # fmt: skip
    assert not ok and last.ready == 1
    assert now[0] <= 125
    assert len(lines) == 3  # first line, then a heartbeat line each minute
