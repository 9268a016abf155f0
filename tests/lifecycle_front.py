"""A front for moto answering the two lifecycle calls moto 5 does not implement.

moto answers ``CompleteLifecycleAction`` and ``RecordLifecycleActionHeartbeat``
with HTTP 500 (NotImplementedError). :class:`LifecycleFront` answers them the
way AWS does (validating the group and hook against moto, recording each call
with its time) and forwards every other call to moto. The agent's tests and
the controller's lifecycle follow-up use it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

from .support import MotoFront

REGION = "us-east-1"
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"


def autoscaling_client(endpoint_url: str | None = None) -> Any:
    return boto3.client("autoscaling", region_name=REGION, endpoint_url=endpoint_url, **CREDS)


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
            xml = _error("ValidationError", f"No Lifecycle Hook found with name {hook_name}")
        elif iid not in self.active:
            result, status = "no_active", 400
            xml = _error(
                "ValidationError", f"No active Lifecycle Action found with instance ID {iid}"
            )
        else:
            if action == "CompleteLifecycleAction":
                self.active.discard(iid)
                self.tokens = {t: i for t, i in self.tokens.items() if i != iid}
            result, status = "ok", 200
            xml = _ok(action)
        self.calls.append(LifecycleCall(action, form, time.time(), result))
        return status, xml

    def completions(self) -> list[LifecycleCall]:
        return [c for c in self.calls if c.action == "CompleteLifecycleAction"]


def _ok(action: str) -> str:
    return (
        f'<{action}Response xmlns="{NS}"><{action}Result/>'
        f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )


def _error(code: str, message: str) -> str:
    return (
        f'<ErrorResponse xmlns="{NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    )
