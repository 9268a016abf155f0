"""The capacity controller against real parts: moto (server mode) for Auto Scaling, SQS and
CloudWatch, a real router (gunicorn) as the registry, EventBridge events from the AWS
documentation as SQS message bodies.

moto answers ``DescribeScalingActivities`` with an empty list (it does not simulate
launch failures): the Lambda end to end is driven by the routers' ready-node count
(``min_ready``) there, and :class:`ShortageFront` answers the call with documented
entries for the spot-failure path (the all-at-once raise, probe backoff across cold
starts). :class:`~tests.support.controller.PartialUpdateFront` gives moto AWS's
partial ``UpdateAutoScalingGroup``. The terminate-action follow-up has its own module,
``test_controller_lifecycle.py``.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from spotrelay.controller import handler as lambda_handler
from spotrelay.controller.aws import TAG_CHANGED_AT, TAG_FAILED_PROBES, TAG_PROBE_AT, AsgGateway
from spotrelay.controller.fallback import Action, Decision, FallbackState
from spotrelay.controller.interruptions import InterruptionHandler, Outcome
from spotrelay.controller.queue import QueueConsumer
from spotrelay.controller.routers import RouterError, RouterFleet
from spotrelay.sim.loopback import free_port
from tests.support import (
    ROUTER_TOKEN,
    router_nodes,
    scaling_activities_xml,
    start_router,
)

# -- the interruption queue ------------------------------------------------------------
from tests.support.controller import (
    FIXTURES,
    INSTANCE,
    REGION,
    PartialUpdateFront,
    attach_spot,
    base_of,
    client,
    documented,
    group_of,
    make_group,
    register,
)

pytestmark = pytest.mark.usefixtures("fake_aws_credentials")


@pytest.fixture
def router(procs, logdir) -> Iterator[str]:
    yield start_router(procs, logdir).control_url  # control plane only


@pytest.fixture
def aws(moto_endpoint: str) -> Iterator[PartialUpdateFront]:
    front = PartialUpdateFront(moto_endpoint)
    try:
        yield front
    finally:
        front.close()


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
    name = make_group(moto_endpoint, desired=1)  # its one node is not on spot
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


# -- one run fills every node spot does not serve ------------------------------------------


def test_one_run_moves_every_node_spot_does_not_serve_to_on_demand(moto_endpoint: str) -> None:
    """A 4-node pool: 1 spot instance still serving, 3 without spot (moto launches them without
    a market, as EC2 reports on-demand); spot launches failing. One run raises the base to 3:
    never to 4, which would swap the serving spot node for on-demand too."""
    name = make_group(moto_endpoint, desired=3)
    attach_spot(moto_endpoint, name, 1)
    assert group_of(moto_endpoint, name)["DesiredCapacity"] == 4
    front = ShortageFront(moto_endpoint)
    try:
        now = datetime(2026, 11, 29, 20, 0, tzinfo=UTC).timestamp()
        front.activities += [activity(now - 120, ok=False), activity(now - 5, ok=False)]
        settings = lambda_handler.from_env(
            {"SPOTRELAY_ASG_NAME": name, "SPOTRELAY_AWS_ENDPOINT_URL": front.url}
        )
        controller = lambda_handler.Controller(
            settings, lambda_handler.boto3_clients(settings), clock=lambda: now
        )
        decision = controller.run_fallback()
        assert decision is not None and decision.action is Action.RAISE, decision
        assert base_of(moto_endpoint, name) == 3
        assert "3 node(s) missing on spot" in decision.reason
        again = controller.run_fallback()  # the next period: same observation, same target
        assert again is not None and again.action is Action.HOLD
        assert base_of(moto_endpoint, name) == 3
    finally:
        front.close()


# -- the node token is re-read when a router answers 401 -----------------------------------


def test_a_rotated_node_token_is_re_read_on_401(
    lambda_env: str, moto_endpoint: str, router: str
) -> None:
    register(router, "node-a", INSTANCE)
    ssm = client("ssm", moto_endpoint)
    parameter = f"/spotrelay/{lambda_env}/node-token"
    ssm.put_parameter(Name=parameter, Value="the-old-token", Type="SecureString", Overwrite=True)
    record = {
        "messageId": "m-rotated",
        "body": json.dumps(documented("spot-interruption-warning")),
        "eventSource": "aws:sqs",
    }
    # A warm controller read the old token at its cold start; then the token is rotated.
    settings = lambda_handler.from_env(os.environ)
    warm = lambda_handler.Controller(settings, lambda_handler.boto3_clients(settings))
    assert warm.routers.token == "the-old-token"
    ssm.put_parameter(Name=parameter, Value=ROUTER_TOKEN, Type="SecureString", Overwrite=True)
    assert warm.on_records([record]) == {"batchItemFailures": []}  # 401, re-read, retried
    assert router_nodes(router)["node-a"]["state"] == "draining"
    assert warm.routers.token == ROUTER_TOKEN
