"""AWS for tests: credentials for moto, a scripted Auto Scaling endpoint, moto's groups.

The agent's lifecycle calls are checked against botocore's API model by
:class:`ScriptedAws`; moto 5 answers ``CompleteLifecycleAction`` and
``RecordLifecycleActionHeartbeat`` with HTTP 500 (NotImplementedError), so for
end-to-end tests :class:`LifecycleFront` stands in front of moto: it answers
those two actions itself (validating the group and hook against moto and
recording each call with its time) and forwards every other action to moto.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.session

from spotrelay.agent.autoscaling_api import AutoScalingAPI
from spotrelay.agent.lifecycle import LifecycleHook

from .services import AUTOSCALING_NS, MotoFront

REGION = "us-east-1"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def client(service: str, endpoint: str | None = None) -> Any:
    """A boto3 client for ``service`` at ``endpoint`` (moto) with test credentials."""
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint, **CREDS)


def aws_env() -> dict[str, str]:
    """Environment for code talking to the fake endpoints: test credentials, no IMDS lookup."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def autoscaling_client(endpoint_url: str | None = None) -> Any:
    return client("autoscaling", endpoint_url)


def autoscaling_api(endpoint_url: str) -> AutoScalingAPI:
    creds = botocore.session.Session().get_credentials() or static_creds()
    return AutoScalingAPI(REGION, endpoint_url=endpoint_url, credentials=creds)


def static_creds() -> Any:
    from botocore.credentials import Credentials

    return Credentials("testing", "testing")


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
        self.replies.append((200, ok_xml(action)))

    def fail(self, code: str, message: str, status: int = 400) -> None:
        self.replies.append((status, error_xml(code, message)))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedAws:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def hook_at(aws: ScriptedAws, instance_id: str = "i-0123456789abcdef0") -> LifecycleHook:
    """The agent's lifecycle hook for group ``gpu-asg``, calling ``aws``."""
    return LifecycleHook(
        "gpu-asg", "drain-hook", instance_id, region=REGION, api=autoscaling_api(aws.url)
    )


@dataclass
class MotoAsg:
    endpoint: str
    asg_name: str
    hook_name: str
    instance_id: str


def create_asg(endpoint: str, asg_name: str = "gpu-asg", hook_name: str = "drain-hook") -> MotoAsg:
    """An ASG of one instance with a termination lifecycle hook, in moto."""
    ec2 = client("ec2", endpoint)
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


@dataclass
class LifecycleCall:
    action: str
    params: dict[str, str]
    at: float
    result: str


class LifecycleFront(MotoFront):
    """CompleteLifecycleAction/RecordLifecycleActionHeartbeat in front of moto.

    ``arm(instance_id, token)`` puts the instance in ``Terminating:Wait``: the
    next CompleteLifecycleAction for it (by instance id, or by the action's
    token when one was armed) succeeds; without it (or a second time) the
    answer is AWS's ``ValidationError: No active Lifecycle Action found``.
    The agent's tests and the controller's lifecycle follow-up use it.
    """

    def __init__(self, moto: str) -> None:
        self.calls: list[LifecycleCall] = []
        self.active: set[str] = set()
        self.tokens: dict[str, str] = {}  # lifecycle action token -> instance id
        self._asg = autoscaling_client(moto)
        super().__init__(moto)

    def answer(self, form: dict[str, str]) -> tuple[int, str] | None:
        action = form.get("Action", "")
        if action in ("CompleteLifecycleAction", "RecordLifecycleActionHeartbeat"):
            return self.handle(action, form)
        return None

    def arm(self, instance_id: str, token: str | None = None) -> None:
        self.active.add(instance_id)
        if token is not None:
            self.tokens[token] = instance_id

    def handle(self, action: str, form: dict[str, str]) -> tuple[int, str]:
        iid = form.get("InstanceId") or self.tokens.get(form.get("LifecycleActionToken", ""), "")
        group, hook_name = form.get("AutoScalingGroupName", ""), form.get("LifecycleHookName", "")
        hooks = self._asg.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]
        if not any(h["LifecycleHookName"] == hook_name for h in hooks):
            result, status = "no_hook", 400
            xml = error_xml("ValidationError", f"No Lifecycle Hook found with name {hook_name}")
        elif iid not in self.active:
            result, status = "no_active", 400
            xml = error_xml(
                "ValidationError", f"No active Lifecycle Action found with instance ID {iid}"
            )
        else:
            if action == "CompleteLifecycleAction":
                self.active.discard(iid)
                self.tokens = {t: i for t, i in self.tokens.items() if i != iid}
            result, status = "ok", 200
            xml = ok_xml(action)
        self.calls.append(LifecycleCall(action, form, time.time(), result))
        return status, xml

    def completions(self) -> list[LifecycleCall]:
        return [c for c in self.calls if c.action == "CompleteLifecycleAction"]


def ok_xml(action: str) -> str:
    """A successful Query-protocol answer to ``action``."""
    return (
        f'<{action}Response xmlns="{AUTOSCALING_NS}"><{action}Result/>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )


def error_xml(code: str, message: str) -> str:
    """An AWS error answer (Query protocol)."""
    return (
        f'<ErrorResponse xmlns="{AUTOSCALING_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    )
