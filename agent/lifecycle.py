"""The ASG termination lifecycle hook: complete it (CONTINUE) and keep it alive.

The calls go through :class:`~.autoscaling_api.AutoScalingAPI`, a minimal signed
Query-protocol client (boto3 would cost the agent about 20 MB of RSS at the
moment it matters least to spend it: see that module). It is built on the
first call, so nodes without a hook (or that are never terminated) pay nothing.

``CompleteLifecycleAction`` answering ``ValidationError: No active Lifecycle
Action found`` means there is nothing to complete (the hook timed out, the
action was already completed, or the instance is not in ``Terminating:Wait``
— e.g. a spot notice AWS raised before the ASG reacted): that counts as done.
"""

from __future__ import annotations

import logging
from typing import Any

from .autoscaling_api import AutoScalingAPI, AwsError, AwsRetryableError

log = logging.getLogger("spotrelay.agent.lifecycle")

NO_ACTIVE = "No active Lifecycle Action"


class LifecycleError(Exception):
    """A lifecycle call failed in a way worth retrying (throttling, network, 5xx)."""


def _no_active_action(exc: AwsError) -> bool:
    return exc.code == "ValidationError" and NO_ACTIVE in exc.message


class LifecycleHook:
    """``CompleteLifecycleAction`` / ``RecordLifecycleActionHeartbeat`` for this instance."""

    def __init__(
        self,
        asg_name: str,
        hook_name: str,
        instance_id: str,
        *,
        region: str | None,
        endpoint_url: str | None = None,
        api: AutoScalingAPI | None = None,
        dry_run: bool = False,
    ) -> None:
        self.asg_name = asg_name
        self.hook_name = hook_name
        self.instance_id = instance_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.dry_run = dry_run
        self._api = api

    def api(self) -> AutoScalingAPI:
        if self._api is None:
            self._api = AutoScalingAPI(self.region, endpoint_url=self.endpoint_url)
        return self._api

    def _params(self) -> dict[str, str]:
        return {
            "LifecycleHookName": self.hook_name,
            "AutoScalingGroupName": self.asg_name,
            "InstanceId": self.instance_id,
        }

    def complete(self) -> str:
        """CONTINUE the termination; returns ``completed`` or ``no_active_action``."""
        if self.dry_run:
            log.info("dry run: would CompleteLifecycleAction CONTINUE", extra=self._params())
            return "completed"
        try:
            self.api().call(
                "CompleteLifecycleAction", {**self._params(), "LifecycleActionResult": "CONTINUE"}
            )
        except AwsError as exc:
            if _no_active_action(exc):
                log.info("no active lifecycle action to complete (counts as done)")
                return "no_active_action"
            raise LifecycleError(str(exc)) from None
        except AwsRetryableError as exc:
            raise LifecycleError(str(exc)) from None
        log.info("completed lifecycle action (CONTINUE)", extra=self._params())
        return "completed"

    def heartbeat(self) -> bool:
        """Extend the hook's timeout; False if there is no active action or the call failed."""
        if self.dry_run:
            log.info("dry run: would RecordLifecycleActionHeartbeat")
            return True
        try:
            self.api().call("RecordLifecycleActionHeartbeat", self._params())
        except AwsError as exc:
            if _no_active_action(exc):
                log.debug("no active lifecycle action to heartbeat")
            else:
                log.warning("RecordLifecycleActionHeartbeat failed: %s", exc)
            return False
        except AwsRetryableError as exc:
            log.warning("RecordLifecycleActionHeartbeat failed: %s", exc)
            return False
        log.debug("recorded lifecycle action heartbeat")
        return True

    def describe_hook(self) -> dict[str, Any] | None:
        """The hook as the ASG knows it (``spotrelay agent check``); None if absent."""
        result = self.api().call(
            "DescribeLifecycleHooks",
            {"AutoScalingGroupName": self.asg_name, "LifecycleHookNames": [self.hook_name]},
        )
        hooks = (result or {}).get("LifecycleHooks") or []
        return hooks[0] if hooks else None
