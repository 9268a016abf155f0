"""The agent's AWS calls, over real HTTP: a scripted Auto Scaling endpoint checks
every request against botocore's API model (action, parameter names, SigV4
signature scope) for the two lifecycle actions moto does not implement, and
moto in server mode serves what it does (Auto Scaling group, lifecycle hook, EC2).

moto 5 answers ``CompleteLifecycleAction`` and ``RecordLifecycleActionHeartbeat``
with HTTP 500 (NotImplementedError). For the end-to-end tests, which run the
agent as a subprocess, :class:`~tests.lifecycle_front.LifecycleFront` stands in front of moto: it
answers those two actions itself (validating the group and hook against moto
and recording each call with its time) and forwards every other action to
moto unchanged. The agent is pointed at it with ``lifecycle.endpoint_url``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.session
import pytest

from spotrelay.agent.autoscaling_api import AutoScalingAPI, AwsError
from spotrelay.agent.lifecycle import LifecycleError, LifecycleHook

from .lifecycle_front import LifecycleFront, _error, _ok, autoscaling_client

REGION = "us-east-1"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def autoscaling_api(endpoint_url: str) -> AutoScalingAPI:
    creds = botocore.session.Session().get_credentials() or _static_creds()
    return AutoScalingAPI(REGION, endpoint_url=endpoint_url, credentials=creds)


def _static_creds() -> Any:
    from botocore.credentials import Credentials

    return Credentials("testing", "testing")


def aws_env() -> dict[str, str]:
    """Environment for an agent subprocess talking to the fake endpoints."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# ------------------------------------------- a scripted Auto Scaling endpoint

MODEL = botocore.session.get_session().get_service_model("autoscaling")
SIGV4 = re.compile(r"AWS4-HMAC-SHA256 Credential=testing/\d{8}/us-east-1/autoscaling/aws4_request")


@dataclass
class ScriptedAws:
    """Answers each POST with the next scripted (status, xml); records the forms."""

    replies: list[tuple[int, str]] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        aws = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                assert SIGV4.match(self.headers.get("Authorization", "")), self.headers
                aws.forms.append(form)
                status, xml = aws.replies.pop(0)
                data = xml.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def ok(self, action: str) -> None:
        self.replies.append((200, _ok(action)))

    def fail(self, code: str, message: str, status: int = 400) -> None:
        self.replies.append((status, _error(code, message)))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def assert_valid_call(form: dict[str, str]) -> None:
    """The request names a real action and only its real parameters."""
    op = MODEL.operation_model(form["Action"])
    assert form["Version"] == MODEL.api_version
    members = set(op.input_shape.members)
    for key in form:
        if key not in ("Action", "Version"):
            assert key.split(".")[0] in members, (form["Action"], key)
    for required in op.input_shape.required_members:
        assert any(k.split(".")[0] == required for k in form), (form["Action"], required)


@pytest.fixture
def aws() -> Iterator[ScriptedAws]:
    server = ScriptedAws()
    yield server
    server.close()


def _hook(aws: ScriptedAws, instance_id: str = "i-0123456789abcdef0") -> LifecycleHook:
    return LifecycleHook(
        "gpu-asg", "drain-hook", instance_id, region=REGION, api=autoscaling_api(aws.url)
    )


PARAMS = {
    "LifecycleHookName": "drain-hook",
    "AutoScalingGroupName": "gpu-asg",
    "InstanceId": "i-0123456789abcdef0",
}
NO_ACTIVE_MSG = "No active Lifecycle Action found with instance ID i-0123456789abcdef0"


def test_complete_lifecycle_action_sends_continue_by_instance_id(aws: ScriptedAws) -> None:
    aws.ok("CompleteLifecycleAction")
    assert _hook(aws).complete() == "completed"
    (form,) = aws.forms
    assert_valid_call(form)
    assert form["Action"] == "CompleteLifecycleAction"
    assert {k: form[k] for k in PARAMS} == PARAMS
    assert form["LifecycleActionResult"] == "CONTINUE"


def test_no_active_lifecycle_action_counts_as_done(aws: ScriptedAws) -> None:
    aws.fail("ValidationError", NO_ACTIVE_MSG)
    assert _hook(aws).complete() == "no_active_action"


def test_other_lifecycle_errors_are_retryable_failures(aws: ScriptedAws) -> None:
    for _ in range(3):  # the client's own attempts at a throttled call
        aws.fail("Throttling", "Rate exceeded")
    aws.fail("ValidationError", "AutoScalingGroup name not found - gpu-asg")
    hook = _hook(aws)
    with pytest.raises(LifecycleError, match="Rate exceeded"):
        hook.complete()
    with pytest.raises(LifecycleError, match="not found"):
        hook.complete()
    assert len(aws.forms) == 4


def test_a_throttled_call_is_retried_then_succeeds(aws: ScriptedAws) -> None:
    aws.fail("Throttling", "Rate exceeded")
    aws.replies.append((503, "<html>busy</html>"))
    aws.ok("CompleteLifecycleAction")
    assert _hook(aws).complete() == "completed"
    assert len(aws.forms) == 3


def test_record_lifecycle_action_heartbeat(aws: ScriptedAws) -> None:
    aws.ok("RecordLifecycleActionHeartbeat")
    aws.fail("ValidationError", NO_ACTIVE_MSG)
    hook = _hook(aws)
    assert hook.heartbeat() is True
    assert hook.heartbeat() is False  # nothing to extend: logged, not raised
    for form in aws.forms:
        assert_valid_call(form)
        assert {k: form[k] for k in PARAMS} == PARAMS


def test_an_unreachable_endpoint_is_a_retryable_failure() -> None:
    api = AutoScalingAPI(REGION, endpoint_url="http://127.0.0.1:9", credentials=_static_creds())
    hook = LifecycleHook("g", "h", "i-0123456789abcdef0", region=REGION, api=api)
    with pytest.raises(LifecycleError):
        hook.complete()
    assert hook.heartbeat() is False


def test_aws_error_carries_code_and_status(aws: ScriptedAws) -> None:
    aws.fail("AccessDenied", "not authorized to perform autoscaling:CompleteLifecycleAction", 403)
    with pytest.raises(AwsError) as info:
        autoscaling_api(aws.url).call("CompleteLifecycleAction", PARAMS)
    assert (info.value.code, info.value.status) == ("AccessDenied", 403)


def test_boto3_is_not_imported_by_the_agent() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from spotrelay.agent import service, check, cli, lifecycle; "
        "print('boto3' in sys.modules, 'botocore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


# ------------------------------------------------------------------ moto


@dataclass
class MotoAsg:
    endpoint: str
    asg_name: str
    hook_name: str
    instance_id: str


def create_asg(endpoint: str, asg_name: str = "gpu-asg", hook_name: str = "drain-hook") -> MotoAsg:
    """An ASG of one instance with a termination lifecycle hook, in moto."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint, **CREDS)
    asg = autoscaling_client(endpoint)
    ec2.create_launch_template(
        LaunchTemplateName=f"{asg_name}-lt",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "g6.xlarge"},
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=asg_name,
        LaunchTemplate={"LaunchTemplateName": f"{asg_name}-lt"},
        MinSize=1,
        MaxSize=1,
        DesiredCapacity=1,
        AvailabilityZones=[f"{REGION}a"],
    )
    asg.put_lifecycle_hook(
        LifecycleHookName=hook_name,
        AutoScalingGroupName=asg_name,
        LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
        HeartbeatTimeout=120,
        DefaultResult="CONTINUE",
    )
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[asg_name])
    instance_id = group["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    return MotoAsg(endpoint, asg_name, hook_name, instance_id)


def test_describe_hook_against_moto(moto_endpoint: str) -> None:
    setup = create_asg(moto_endpoint, "asg-describe")
    hook = LifecycleHook(
        setup.asg_name, setup.hook_name, setup.instance_id, region=REGION,
        api=autoscaling_api(moto_endpoint),
    )  # fmt: skip
    found = hook.describe_hook()
    assert found is not None
    assert found["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert found["HeartbeatTimeout"] == "120"  # Query-protocol leaves are strings
    missing = LifecycleHook(
        setup.asg_name, "nope", setup.instance_id, region=REGION,
        api=autoscaling_api(moto_endpoint),
    )  # fmt: skip
    assert missing.describe_hook() is None


# --------------------------------------------------- the front for e2e tests


def test_front_answers_like_aws_through_the_agent_code(moto_endpoint: str) -> None:
    setup = create_asg(moto_endpoint, "asg-front")
    front = LifecycleFront(moto_endpoint)
    try:
        hook = LifecycleHook(
            setup.asg_name, setup.hook_name, setup.instance_id, region=REGION,
            api=autoscaling_api(front.url),
        )  # fmt: skip
        assert hook.describe_hook() is not None  # forwarded to moto
        assert hook.complete() == "no_active_action"
        front.arm(setup.instance_id)
        assert hook.heartbeat() is True
        assert hook.complete() == "completed"
        assert hook.complete() == "no_active_action"
        assert [c.result for c in front.calls] == ["no_active", "ok", "ok", "no_active"]
        assert front.calls[2].params["LifecycleActionResult"] == "CONTINUE"
    finally:
        front.close()
