"""The agent's AWS calls, over real HTTP: a scripted Auto Scaling endpoint checks
every request against botocore's API model (action, parameter names, SigV4
signature scope) for the two lifecycle actions moto does not implement, and
moto in server mode serves what it does (Auto Scaling group, lifecycle hook, EC2).

moto 5 answers ``CompleteLifecycleAction`` and ``RecordLifecycleActionHeartbeat``
with HTTP 500 (NotImplementedError). For the end-to-end tests, which run the
agent as a subprocess, :class:`LifecycleFront` stands in front of moto: it
answers those two actions itself (validating the group and hook against moto
and recording each call with its time) and forwards every other action to
moto unchanged. The agent is pointed at it with ``lifecycle.endpoint_url``.
"""

from __future__ import annotations

import pytest

from spotrelay.agent.autoscaling_api import AutoScalingAPI, AwsError
from spotrelay.agent.lifecycle import LifecycleError, LifecycleHook

from .support.aws import (
    REGION,
    LifecycleFront,
    ScriptedAws,
    assert_valid_call,
    autoscaling_api,
    create_asg,
    hook_at,
    static_creds,
)

PARAMS = {
    "LifecycleHookName": "drain-hook",
    "AutoScalingGroupName": "gpu-asg",
    "InstanceId": "i-0123456789abcdef0",
}
NO_ACTIVE_MSG = "No active Lifecycle Action found with instance ID i-0123456789abcdef0"


def test_complete_lifecycle_action_sends_continue_by_instance_id(scripted_aws: ScriptedAws) -> None:
    scripted_aws.ok("CompleteLifecycleAction")
    assert hook_at(scripted_aws).complete() == "completed"
    (form,) = scripted_aws.forms
    assert_valid_call(form)
    assert form["Action"] == "CompleteLifecycleAction"
    assert {k: form[k] for k in PARAMS} == PARAMS
    assert form["LifecycleActionResult"] == "CONTINUE"


def test_no_active_lifecycle_action_counts_as_done(scripted_aws: ScriptedAws) -> None:
    scripted_aws.fail("ValidationError", NO_ACTIVE_MSG)
    assert hook_at(scripted_aws).complete() == "no_active_action"


def test_other_lifecycle_errors_are_retryable_failures(scripted_aws: ScriptedAws) -> None:
    for _ in range(3):  # the client's own attempts at a throttled call
        scripted_aws.fail("Throttling", "Rate exceeded")
    scripted_aws.fail("ValidationError", "AutoScalingGroup name not found - gpu-asg")
    hook = hook_at(scripted_aws)
    with pytest.raises(LifecycleError, match="Rate exceeded"):
        hook.complete()
    with pytest.raises(LifecycleError, match="not found"):
        hook.complete()
    assert len(scripted_aws.forms) == 4


def test_a_throttled_call_is_retried_then_succeeds(scripted_aws: ScriptedAws) -> None:
    scripted_aws.fail("Throttling", "Rate exceeded")
    scripted_aws.replies.append((503, "<html>busy</html>"))
    scripted_aws.ok("CompleteLifecycleAction")
    assert hook_at(scripted_aws).complete() == "completed"
    assert len(scripted_aws.forms) == 3


def test_record_lifecycle_action_heartbeat(scripted_aws: ScriptedAws) -> None:
    scripted_aws.ok("RecordLifecycleActionHeartbeat")
    scripted_aws.fail("ValidationError", NO_ACTIVE_MSG)
    hook = hook_at(scripted_aws)
    assert hook.heartbeat() is True
    assert hook.heartbeat() is False  # nothing to extend: logged, not raised
    for form in scripted_aws.forms:
        assert_valid_call(form)
        assert {k: form[k] for k in PARAMS} == PARAMS


def test_an_unreachable_endpoint_is_a_retryable_failure() -> None:
    api = AutoScalingAPI(REGION, endpoint_url="http://127.0.0.1:9", credentials=static_creds())
    hook = LifecycleHook("g", "h", "i-0123456789abcdef0", region=REGION, api=api)
    with pytest.raises(LifecycleError):
        hook.complete()
    assert hook.heartbeat() is False


def test_aws_error_carries_code_and_status(scripted_aws: ScriptedAws) -> None:
    scripted_aws.fail(
        "AccessDenied", "not authorized to perform autoscaling:CompleteLifecycleAction", 403
    )
    with pytest.raises(AwsError) as info:
        autoscaling_api(scripted_aws.url).call("CompleteLifecycleAction", PARAMS)
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
