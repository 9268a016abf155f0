"""Completing the terminate lifecycle action of a node whose agent is silent, against real
parts: moto (server mode) for SQS and the group with its hook, :class:`LifecycleFront`
answering ``CompleteLifecycleAction`` / ``RecordLifecycleActionHeartbeat`` (moto does not
implement them), a real router (gunicorn) as the source of heartbeats and in-flight
counts, and the documented "EC2 Instance-terminate Lifecycle Action" event.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from spotrelay.controller import handler as lambda_handler
from spotrelay.controller.interruptions import InterruptionHandler, Outcome
from spotrelay.controller.lifecycle import LifecycleFollowUp
from spotrelay.controller.queue import QueueConsumer
from spotrelay.controller.routers import RouterFleet
from spotrelay.sim.loopback import wait_until
from tests.support import (
    ROUTER_TOKEN,
    Service,
    register_node,
    router_nodes,
    start_router,
)
from tests.support.aws import LifecycleFront, autoscaling_client

# -- the interruption queue ------------------------------------------------------------
from tests.support.controller import (
    INSTANCE,
    client,
    documented,
    make_group,
    register,
)
from tests.support.raw_server import RawServer

# -- completing the terminate action of a node whose agent is silent ------------------------

HOOK = "llm-gpu-drain"


pytestmark = pytest.mark.usefixtures("fake_aws_credentials")


@pytest.fixture
def router_service(procs, logdir) -> Service:
    return start_router(procs, logdir)


@pytest.fixture
def router(router_service: Service) -> Iterator[str]:
    """The router's control listener: what the controller and agents talk to."""
    yield router_service.control_url


def lifecycle_setup(
    endpoint: str, *, check_every_s: int = 1, deadline_s: float = 30
) -> tuple[str, LifecycleFront, Any, str, dict]:
    """A group with its terminate hook, the front answering the lifecycle calls, a queue,
    and the documented terminate event for :data:`INSTANCE` with this group and hook."""
    name = make_group(endpoint)
    client("autoscaling", endpoint).put_lifecycle_hook(
        LifecycleHookName=HOOK,
        AutoScalingGroupName=name,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=120,
        DefaultResult="CONTINUE",
    )
    front = LifecycleFront(endpoint)
    sqs = client("sqs", endpoint)
    url = sqs.create_queue(QueueName=f"{name}-interruptions")["QueueUrl"]
    doc = documented(
        "instance-terminate-lifecycle-action", AutoScalingGroupName=name, LifecycleHookName=HOOK
    )
    front.arm(INSTANCE, doc["detail"]["LifecycleActionToken"])
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(doc))
    return name, front, sqs, url, doc


def consumer_for(
    router: str, sqs: Any, url: str, front: LifecycleFront, **followup: Any
) -> QueueConsumer:
    fleet = RouterFleet([router], ROUTER_TOKEN)
    watch = LifecycleFollowUp(
        lambda_handler.sqs_sender(sqs, url),
        autoscaling_client(front.url),
        fleet.sightings,
        silent_after_s=1,
        **followup,
    )
    return QueueConsumer(sqs, url, InterruptionHandler(fleet, followup=watch))


def poll_until(consumer: QueueConsumer, done: Callable[[], bool], timeout: float) -> list:
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out; outcomes so far: {outcomes}"
        outcomes += consumer.poll_once(wait_s=1)
    return outcomes


def queue_empty(sqs: Any, url: str) -> bool:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return (
        attrs["ApproximateNumberOfMessages"] == attrs["ApproximateNumberOfMessagesDelayed"] == "0"
    )


def test_a_silent_agent_s_terminate_action_is_completed_after_the_drain(
    moto_endpoint: str, router: str
) -> None:
    """The documented terminate event drains the node; the agent never heartbeats again and
    nothing is in flight, so a later check completes the action with the event's token."""
    register(router, "node-a", INSTANCE)  # its last heartbeat; the agent hangs after it
    name, front, sqs, url, doc = lifecycle_setup(moto_endpoint)
    try:
        consumer = consumer_for(router, sqs, url, front, check_every_s=1, deadline_s=30)
        outcomes = poll_until(consumer, lambda: bool(front.completions()), timeout=20)
        assert outcomes[0] is Outcome.DRAINED and Outcome.LIFECYCLE_CHECKED in outcomes
        assert router_nodes(router)["node-a"]["state"] == "draining"
        (call,) = front.completions()
        assert call.result == "ok"
        assert call.params["LifecycleActionToken"] == doc["detail"]["LifecycleActionToken"]
        assert call.params["LifecycleActionResult"] == "CONTINUE"
        assert call.params["AutoScalingGroupName"] == name
        assert call.params["LifecycleHookName"] == HOOK
        # No further checks: the chain ends with the completion.
        poll_until(consumer, lambda: queue_empty(sqs, url), timeout=10)
        assert len(front.completions()) == 1
    finally:
        front.close()


def test_a_live_agent_keeps_its_own_terminate_action(moto_endpoint: str, router: str) -> None:
    """While the agent heartbeats, the controller only checks; at the deadline it stops and
    never completes the action for it (the agent does, after its own drain)."""
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.3):
            register(router, "node-a", INSTANCE, state="draining")

    register(router, "node-a", INSTANCE)
    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    _, front, sqs, url, _ = lifecycle_setup(moto_endpoint)
    try:
        consumer = consumer_for(router, sqs, url, front, check_every_s=1, deadline_s=3)
        outcomes = poll_until(consumer, lambda: queue_empty(sqs, url), timeout=20)
        assert outcomes.count(Outcome.LIFECYCLE_CHECKED) >= 2  # checked until the deadline
        assert front.completions() == [] and front.calls == []
    finally:
        stop.set()
        beating.join(timeout=5)
        front.close()


def test_the_lambda_schedules_its_check_and_completes_on_the_next_invocation(
    moto_endpoint: str, router: str
) -> None:
    """The Lambda path: the terminate event's record drains and puts a delayed check on the
    queue (SPOTRELAY_QUEUE_URL); that check, delivered as the next invocation's record,
    completes the action. No invocation waits for the node."""
    register(router, "node-a", INSTANCE)
    name, front, sqs, url, doc = lifecycle_setup(moto_endpoint)
    try:
        event = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"][0]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=event["ReceiptHandle"])
        settings = lambda_handler.from_env(
            {
                "SPOTRELAY_ASG_NAME": name,
                "SPOTRELAY_ROUTER_URLS": router,
                "SPOTRELAY_NODE_TOKEN": ROUTER_TOKEN,
                "SPOTRELAY_AWS_ENDPOINT_URL": front.url,
                "SPOTRELAY_QUEUE_URL": url,
                "SPOTRELAY_LIFECYCLE_CHECK_EVERY_S": "1",
                "SPOTRELAY_AGENT_SILENT_AFTER_S": "1",
            }
        )
        controller = lambda_handler.Controller(settings, lambda_handler.boto3_clients(settings))

        def record(msg: dict) -> dict:
            return {"messageId": msg["MessageId"], "body": msg["Body"], "eventSource": "aws:sqs"}

        assert controller.on_records([record(event)]) == {"batchItemFailures": []}
        assert router_nodes(router)["node-a"]["state"] == "draining"
        assert front.completions() == []  # nothing completed while the event was handled
        deadline = time.monotonic() + 20
        while not front.completions():
            assert time.monotonic() < deadline, "no check completed the action"
            for msg in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", []):
                assert json.loads(msg["Body"])["spotrelay"] == "spotrelay.lifecycle-check"
                assert controller.on_records([record(msg)]) == {"batchItemFailures": []}
                sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
        (call,) = front.completions()
        assert call.params["LifecycleActionToken"] == doc["detail"]["LifecycleActionToken"]
    finally:
        front.close()


def test_requests_in_flight_on_a_silent_agent_s_node_hold_the_action(
    moto_endpoint: str, router: str, router_service: Service
) -> None:
    """A request still streams from the node of a silent agent: the checks keep the hook
    alive with RecordLifecycleActionHeartbeat and complete only once the routers report
    nothing in flight."""
    release = threading.Event()

    def slow_engine(conn: socket.socket, _: int) -> None:
        conn.recv(65536)
        release.wait(30)
        body = json.dumps({"id": "c", "object": "text_completion", "choices": []}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        conn.sendall(head.encode() + b"\r\n\r\n" + body)

    engine = RawServer(slow_engine)
    register_node(router, ROUTER_TOKEN, "node-a", f"http://127.0.0.1:{engine.port}", "m",
                  instance_id=INSTANCE)  # fmt: skip
    answered: list[int] = []

    def client_request() -> None:
        req = urllib.request.Request(
            router_service.url + "/v1/completions",
            data=json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            answered.append(resp.status)

    requester = threading.Thread(target=client_request, daemon=True)
    requester.start()
    assert wait_until(lambda: router_nodes(router)["node-a"]["in_flight"] == 1, timeout=10)
    _, front, sqs, url, _ = lifecycle_setup(moto_endpoint)
    try:
        consumer = consumer_for(router, sqs, url, front, check_every_s=1, deadline_s=60)
        poll_until(consumer, lambda: bool(front.calls), timeout=10)
        assert front.completions() == []  # a heartbeat first: the request is still running
        assert front.calls[0].action == "RecordLifecycleActionHeartbeat"
        released_at = time.time()
        release.set()
        requester.join(timeout=10)
        assert answered == [200]  # the client's request finished on the drained node
        poll_until(consumer, lambda: bool(front.completions()), timeout=15)
        assert front.completions()[0].at >= released_at
    finally:
        release.set()
        engine.close()
        front.close()
