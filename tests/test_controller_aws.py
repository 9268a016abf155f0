"""The capacity controller against real parts: moto (server mode) for Auto Scaling, SQS and
CloudWatch, a real router (gunicorn) as the registry, EventBridge events from the AWS
documentation as SQS message bodies.

moto answers ``DescribeScalingActivities`` with an empty list (it does not simulate
launch failures), so the end-to-end fallback here is driven by the routers' ready-node
count (``min_ready``); the spot-failure path is covered by the decision tests with the
documented activity fixtures.

moto also cannot apply a *partial* mixed-instances update (AWS leaves what the request
omits unchanged; moto requires the launch template). The controller deliberately omits
it (naming the template would need ``ec2:RunInstances`` and ``iam:PassRole``), so
:class:`PartialUpdateFront` sits in front of moto: it records each
``UpdateAutoScalingGroup`` as sent, adds the group's current launch template the way
AWS keeps it, and forwards every call to moto.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from spotrelay.controller import handler as lambda_handler
from spotrelay.controller.aws import TAG_CHANGED_AT, TAG_FAILED_PROBES, TAG_PROBE_AT, AsgGateway
from spotrelay.controller.fallback import Action, Decision, FallbackState
from spotrelay.controller.interruptions import InterruptionHandler, Outcome
from spotrelay.controller.queue import QueueConsumer
from spotrelay.controller.routers import RouterError, RouterFleet
from spotrelay.core.net import free_port
from tests.support import (
    ROUTER_TOKEN,
    MotoFront,
    register_node,
    router_nodes,
    scaling_activities_xml,
    start_router,
)

REGION = "us-east-1"
FIXTURES = Path(__file__).parent / "fixtures" / "eventbridge"
INSTANCE = "i-1234567890abcdef0"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)


def client(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def documented(name: str, instance_id: str = INSTANCE, **detail: str) -> dict:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    key = "EC2InstanceId" if "EC2InstanceId" in doc["detail"] else "instance-id"
    doc["detail"].update({key: instance_id, **detail})
    return doc


class PartialUpdateFront(MotoFront):
    """An HTTP front for moto giving ``UpdateAutoScalingGroup`` AWS's partial-update semantics."""

    def __init__(self, moto: str) -> None:
        self.updates: list[dict[str, str]] = []  # UpdateAutoScalingGroup forms, as sent
        super().__init__(moto)

    def rewrite(self, form: dict[str, str]) -> dict[str, str]:
        if form.get("Action") != "UpdateAutoScalingGroup":
            return form
        self.updates.append(dict(form))
        return self.keep_template(form)

    def keep_template(self, form: dict[str, str]) -> dict[str, str]:
        """Add the group's launch template and overrides when the update leaves them out."""
        prefix = "MixedInstancesPolicy."
        if not any(k.startswith(prefix) for k in form) or any(
            k.startswith(prefix + "LaunchTemplate.") for k in form
        ):
            return form
        group = group_of(self.moto, form["AutoScalingGroupName"])
        template = group["MixedInstancesPolicy"]["LaunchTemplate"]
        spec = template["LaunchTemplateSpecification"]
        out = dict(form)
        lt = prefix + "LaunchTemplate."
        out[lt + "LaunchTemplateSpecification.LaunchTemplateId"] = spec["LaunchTemplateId"]
        out[lt + "LaunchTemplateSpecification.Version"] = spec.get("Version", "$Default")
        for i, override in enumerate(template.get("Overrides", []), start=1):
            out[f"{lt}Overrides.member.{i}.InstanceType"] = override["InstanceType"]
        return out


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[PartialUpdateFront]:
    front = PartialUpdateFront(moto_endpoint)
    try:
        yield front
    finally:
        front.close()


_groups = iter(range(1000))


def make_group(endpoint: str, base: int = 0) -> str:
    """A mixed-instances group like the gpu-pool module's, in moto."""
    name = f"llm-gpu-{next(_groups)}"
    ec2 = client("ec2", endpoint)
    template = ec2.create_launch_template(
        LaunchTemplateName=f"{name}-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g6.xlarge"},
    )["LaunchTemplate"]
    client("autoscaling", endpoint).create_auto_scaling_group(
        AutoScalingGroupName=name,
        MinSize=0,
        MaxSize=4,
        DesiredCapacity=0,
        AvailabilityZones=[f"{REGION}a"],
        CapacityRebalance=True,
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateId": template["LaunchTemplateId"],
                    "Version": "$Latest",
                },
                "Overrides": [{"InstanceType": "g6.xlarge"}, {"InstanceType": "g5.xlarge"}],
            },
            "InstancesDistribution": {
                "OnDemandAllocationStrategy": "prioritized",
                "OnDemandBaseCapacity": base,
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
        },
    )
    return name


def group_of(endpoint: str, name: str) -> dict:
    groups = client("autoscaling", endpoint).describe_auto_scaling_groups(
        AutoScalingGroupNames=[name]
    )
    return groups["AutoScalingGroups"][0]


def base_of(endpoint: str, name: str) -> int:
    dist = group_of(endpoint, name)["MixedInstancesPolicy"]["InstancesDistribution"]
    return int(dist["OnDemandBaseCapacity"])


@pytest.fixture
def router(procs, logdir) -> Iterator[str]:
    yield start_router(procs, logdir).control_url  # control plane only


def register(router_url: str, node: str, instance_id: str, state: str = "ready") -> None:
    register_node(
        router_url,
        ROUTER_TOKEN,
        node,
        f"http://127.0.0.1:{free_port()}",
        "m",
        state=state,
        instance_id=instance_id,
    )


# -- the interruption queue ------------------------------------------------------------


def test_queue_events_drain_the_node_once(moto_endpoint: str, router: str) -> None:
    register(router, "node-a", INSTANCE)
    register(router, "node-b", "i-0fedcba9876543210")
    sqs = client("sqs", moto_endpoint)
    url = sqs.create_queue(QueueName="interruptions-1")["QueueUrl"]
    for body in (
        documented("spot-interruption-warning"),
        documented("spot-interruption-warning"),  # at-least-once delivery
        documented("instance-terminate-lifecycle-action"),
        documented("instance-state-change", state="shutting-down"),
        documented("spot-interruption-warning", instance_id="i-0aaaaaaaaaaaaaaaa"),
    ):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))

    consumer = QueueConsumer(sqs, url, InterruptionHandler(RouterFleet([router], ROUTER_TOKEN)))
    outcomes: list[Outcome] = []
    for _ in range(5):
        outcomes += consumer.poll_once()
        if len(outcomes) == 5:
            break
    assert sorted(outcomes) == sorted(
        [Outcome.DRAINED, *[Outcome.DUPLICATE] * 3, Outcome.NOT_REGISTERED]
    )
    nodes = router_nodes(router)
    assert nodes["node-a"]["state"] == "draining" and nodes["node-a"]["admin_drained"]
    assert nodes["node-b"]["state"] == "ready"
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"  # all handled, all deleted


def test_node_drained_by_its_agent_is_not_drained_again(moto_endpoint: str, router: str) -> None:
    register(router, "node-a", INSTANCE, state="draining")  # the agent heard it first
    fleet = RouterFleet([router], ROUTER_TOKEN)
    outcome, _ = InterruptionHandler(fleet).handle(documented("spot-interruption-warning"))
    assert outcome is Outcome.DUPLICATE
    assert router_nodes(router)["node-a"]["admin_drained"]  # sticks even if the agent recovers


def test_unreachable_routers_leave_the_message_for_a_retry(moto_endpoint: str) -> None:
    sqs = client("sqs", moto_endpoint)
    url = sqs.create_queue(QueueName="interruptions-2", Attributes={"VisibilityTimeout": "0"})[
        "QueueUrl"
    ]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(documented("spot-interruption-warning")))
    dead = RouterFleet([f"http://127.0.0.1:{free_port()}"], ROUTER_TOKEN, timeout_s=1)
    assert QueueConsumer(sqs, url, InterruptionHandler(dead)).poll_once() == []
    with pytest.raises(RouterError):
        dead.drain_instance(INSTANCE)
    again = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    assert len(again.get("Messages", [])) == 1  # still there: SQS redelivers, then the DLQ


# -- the group ----------------------------------------------------------------------------


def test_apply_is_conditional_on_the_observed_base(
    moto_endpoint: str, aws: PartialUpdateFront
) -> None:
    name = make_group(moto_endpoint)
    gateway = AsgGateway(client("autoscaling", aws.url), name)
    obs, state = gateway.observe(ready_nodes=None)
    assert obs.on_demand_base == 0 and state == FallbackState()
    raise_to_1 = Decision(Action.RAISE, 0, 1, "test", FallbackState(changed_at=1e9))

    # Two runs decided from the same observation, at once: whichever writes, the value
    # is the same absolute target, never 0 + 1 + 1.
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(gateway.apply(raise_to_1, state)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert base_of(moto_endpoint, name) == 1
    # A stale decision (saw 0, the group is at 1 now) is not applied.
    assert gateway.apply(raise_to_1, state) is False
    assert base_of(moto_endpoint, name) == 1
    group = group_of(moto_endpoint, name)
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == [
        "g6.xlarge",
        "g5.xlarge",
    ]  # the rest of the policy survives the update
    sent = aws.updates[0]
    assert sent["MixedInstancesPolicy.InstancesDistribution.OnDemandBaseCapacity"] == "1"
    assert sent["MixedInstancesPolicy.InstancesDistribution.SpotAllocationStrategy"] == (
        "price-capacity-optimized"
    )
    assert not [k for k in sent if "LaunchTemplate" in k]  # no ec2:RunInstances needed
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert float(tags[TAG_CHANGED_AT]) == 1e9


# -- the Lambda handler, end to end --------------------------------------------------------


def invoke(event: dict) -> dict:
    return lambda_handler.handler(event, None)


SCHEDULED = {
    "version": "0",
    "id": "89d1a02d-5ec7-412e-82f5-13505f849b41",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-29T20:00:00Z",
    "region": REGION,
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/llm-gpu-controller"],
    "detail": {},
}


@pytest.fixture
def lambda_env(
    moto_endpoint: str, aws: PartialUpdateFront, router: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    name = make_group(moto_endpoint)
    ssm = client("ssm", moto_endpoint)
    ssm.put_parameter(Name=f"/spotrelay/{name}/node-token", Value=ROUTER_TOKEN, Type="SecureString")
    env = {
        "SPOTRELAY_ASG_NAME": name,
        "SPOTRELAY_POOL": name,
        "SPOTRELAY_ROUTER_URLS": router,
        "SPOTRELAY_NODE_TOKEN_PARAMETER": f"/spotrelay/{name}/node-token",
        "SPOTRELAY_AWS_ENDPOINT_URL": aws.url,
        "SPOTRELAY_FALLBACK_AFTER_S": "0",
        "SPOTRELAY_RECOVER_AFTER_S": "0",
        "SPOTRELAY_STEP_INTERVAL_S": "0",
        "SPOTRELAY_MIN_READY": "2",
        "SPOTRELAY_MAX_ON_DEMAND": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    lambda_handler.reset()
    yield name
    lambda_handler.reset()


def test_lambda_raises_and_lowers_the_on_demand_base(
    lambda_env: str, moto_endpoint: str, router: str
) -> None:
    name = lambda_env
    register(router, "node-a", INSTANCE)  # 1 ready < min_ready 2

    first = invoke(SCHEDULED)
    assert first["action"] == "raise" and "ready nodes 1 < min_ready 2" in first["reason"]
    assert base_of(moto_endpoint, name) == 1
    assert invoke(SCHEDULED)["action"] == "raise"
    assert base_of(moto_endpoint, name) == 2
    held = invoke(SCHEDULED)
    assert held["action"] == "hold" and "max_on_demand" in held["reason"]
    assert base_of(moto_endpoint, name) == 2

    register(router, "node-b", "i-0fedcba9876543210")  # the on-demand node came up
    assert invoke(SCHEDULED)["action"] == "lower"
    assert base_of(moto_endpoint, name) == 1

    cw = client("cloudwatch", moto_endpoint)
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="spotrelay")["Metrics"]}
    assert {
        "FallbackDecisions",
        "OnDemandBaseCapacity",
        "ReadyNodes",
        "FailedRecoveryProbes",
    } <= names


def test_lambda_drains_from_sqs_records(lambda_env: str, router: str) -> None:
    register(router, "node-a", INSTANCE)
    records = [
        {
            "messageId": f"m-{i}",
            "receiptHandle": f"r-{i}",
            "body": json.dumps(body),
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:llm-gpu-interruptions",
            "awsRegion": REGION,
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {},
        }
        for i, body in enumerate(
            [
                documented("spot-interruption-warning"),
                documented("instance-state-change", state="stopping"),
            ]
        )
    ]
    assert invoke({"Records": records}) == {"batchItemFailures": []}
    assert router_nodes(router)["node-a"]["state"] == "draining"


def test_router_drain_by_instance_needs_the_token_and_an_instance_id(router: str) -> None:
    import urllib.request

    def post(path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(router + path, data=b"{}", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    register(router, "node-a", INSTANCE)
    assert post(f"/instances/{INSTANCE}/drain", None) == 401
    assert post("/instances/not-an-instance/drain", ROUTER_TOKEN) == 400
    assert post("/instances/i-0aaaaaaaaaaaaaaaa/drain", ROUTER_TOKEN) == 404
    assert router_nodes(router)["node-a"]["state"] == "ready"
    assert post(f"/instances/{INSTANCE}/drain", ROUTER_TOKEN) == 200
    assert router_nodes(router)["node-a"]["state"] == "draining"


def test_lambda_reports_unreachable_routers_as_batch_item_failures(
    lambda_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPOTRELAY_ROUTER_URLS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("SPOTRELAY_ROUTER_TIMEOUT_S", "1")
    lambda_handler.reset()
    record = {
        "messageId": "m-retry",
        "receiptHandle": "r-retry",
        "body": json.dumps(documented("spot-interruption-warning")),
        "eventSource": "aws:sqs",
    }
    assert invoke({"Records": [record]}) == {"batchItemFailures": [{"itemIdentifier": "m-retry"}]}


# -- recovery probes back off, across cold starts ---------------------------------------------

SHORTAGE_ACTIVITIES = json.loads((FIXTURES / "scaling-activities-spot-shortage.json").read_text())


def activity(at: float, ok: bool) -> dict:
    """A documented launch activity of the group at ``at``: spot shortage or success."""
    entries = SHORTAGE_ACTIVITIES["Activities"]
    doc = dict(next(a for a in entries if (a["StatusCode"] == "Successful") == ok))
    doc["StartTime"] = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    return doc


class ShortageFront(PartialUpdateFront):
    """:class:`PartialUpdateFront` whose group reports the launch history the test writes."""

    def __init__(self, moto: str) -> None:
        self.activities: list[dict] = []
        super().__init__(moto)

    def answer(self, form: dict[str, str]) -> tuple[int, str] | None:
        if form.get("Action") == "DescribeScalingActivities":
            return scaling_activities_xml(list(reversed(self.activities)))  # newest first
        return None


def at_once(n: int, fn: Callable[[], Decision]) -> list[Decision]:
    results: list[Decision] = []
    threads = [threading.Thread(target=lambda: results.append(fn())) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_probes_back_off_across_cold_starts(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long shortage: every run is a fresh controller (a cold start) reading its state from
    the group's tags; each failed probe doubles the wait, up to the cap, and spot coming
    back resets it."""
    name = make_group(moto_endpoint)
    front = ShortageFront(moto_endpoint)
    env = {
        "SPOTRELAY_ASG_NAME": name,
        "SPOTRELAY_AWS_ENDPOINT_URL": front.url,
        "SPOTRELAY_FALLBACK_AFTER_S": "300",
        "SPOTRELAY_RECOVER_AFTER_S": "900",
        "SPOTRELAY_STEP_INTERVAL_S": "600",
        "SPOTRELAY_MAX_ON_DEMAND": "1",
        "SPOTRELAY_RECOVER_BACKOFF_MAX_S": "3600",
    }
    settings = lambda_handler.from_env(env)
    now = [datetime(2026, 11, 29, 20, 0, tzinfo=UTC).timestamp()]

    def run(at: float) -> Decision:
        now[0] = at
        controller = lambda_handler.Controller(
            settings, lambda_handler.boto3_clients(settings), clock=lambda: now[0]
        )
        decision = controller.run_fallback()
        assert decision is not None
        return decision

    def tags() -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in group_of(moto_endpoint, name)["Tags"]}

    def fail(at: float) -> float:
        front.activities.append(activity(at, ok=False))
        return at

    try:
        t = now[0]
        fail(t - 400)
        last_failure = fail(t - 10)
        assert run(t).action is Action.RAISE and base_of(moto_endpoint, name) == 1
        front.activities.append(activity(t + 60, ok=True))  # the on-demand node

        probes: list[float] = []
        for expected_wait in (900, 1800, 3600, 3600):
            held = run(last_failure + expected_wait - 1)
            assert held.action is Action.HOLD, held.reason
            assert f"next probe after {expected_wait}s" in held.reason
            probe = run(last_failure + expected_wait)
            assert probe.action is Action.LOWER and base_of(moto_endpoint, name) == 0
            probes.append(probe_at := now[0])
            assert float(tags()[TAG_PROBE_AT]) == probe_at  # survives into the next cold start
            if len(probes) == 4:
                break
            # Spot is still short: the replacement fails, the on-demand node stays.
            fail(probe_at + 30)
            last_failure = fail(probe_at + 90)
            # Two runs at once (schedule and a local run): one raises, both agree.
            results = at_once(2, lambda at=probe_at + 600: run(at))
            assert Action.RAISE in {d.action for d in results}
            assert base_of(moto_endpoint, name) == 1
            assert tags()[TAG_FAILED_PROBES] == str(len(probes))  # counted once, not twice
            assert tags()[TAG_PROBE_AT] == ""

        # Spot is back: the last probe's replacement launches; the backoff resets.
        front.activities.append(activity(probes[-1] + 60, ok=True))
        done = run(probes[-1] + 600)
        assert done.action is Action.HOLD and "configured value" in done.reason
        assert tags()[TAG_FAILED_PROBES] == "0"
        assert base_of(moto_endpoint, name) == 0
    finally:
        front.close()
