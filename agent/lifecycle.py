"""ASG lifecycle hooks: complete one (CONTINUE or ABANDON) and keep it alive.

The same class serves the termination hook (the drain completes it with
CONTINUE) and the launch hook (the readiness gate completes it with CONTINUE
once the node serves, ABANDON when it never does).

boto3 is imported lazily, on the first call: it costs tens of megabytes of
memory and most of the agent's start-up time, and nodes without a hook (or
that are never terminated) should not pay for it.

``CompleteLifecycleAction`` answering ``ValidationError: No active Lifecycle
Action found`` means there is nothing to complete (the hook timed out, the
action was already completed, or the instance is not in ``Terminating:Wait``
— e.g. a spot notice AWS raised before the ASG reacted): that counts as done.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("spotrelay.agent.lifecycle")

NO_ACTIVE = "No active Lifecycle Action"


class LifecycleError(Exception):
    """A lifecycle call failed in a way worth retrying (throttling, network, 5xx)."""


def _no_active_action(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    return error.get("Code") == "ValidationError" and NO_ACTIVE in str(error.get("Message", ""))


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
        client: Any = None,
        dry_run: bool = False,
    ) -> None:
        self.asg_name = asg_name
        self.hook_name = hook_name
        self.instance_id = instance_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.dry_run = dry_run
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "autoscaling",
                region_name=self.region,
                endpoint_url=self.endpoint_url,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=3,
                    read_timeout=10,
                ),
            )
        return self._client

    def _params(self) -> dict[str, str]:
        return {
            "LifecycleHookName": self.hook_name,
            "AutoScalingGroupName": self.asg_name,
            "InstanceId": self.instance_id,
        }

    def complete(self, result: str = "CONTINUE") -> str:
        """Complete the action with ``result``; returns ``completed`` or ``no_active_action``."""
        if self.dry_run:
            log.info("dry run: would CompleteLifecycleAction %s", result, extra=self._params())
            return "completed"
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().complete_lifecycle_action(LifecycleActionResult=result, **self._params())
        except ClientError as exc:
            if _no_active_action(exc):
                log.info("no active lifecycle action to complete (counts as done)")
                return "no_active_action"
            raise LifecycleError(f"CompleteLifecycleAction: {exc}") from None
        except BotoCoreError as exc:
            raise LifecycleError(f"CompleteLifecycleAction: {exc}") from None
        log.info("completed lifecycle action (%s)", result, extra=self._params())
        return "completed"

    def heartbeat(self) -> bool:
        """Extend the hook's timeout; False if there is no active action or the call failed."""
        if self.dry_run:
            log.info("dry run: would RecordLifecycleActionHeartbeat")
            return True
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().record_lifecycle_action_heartbeat(**self._params())
        except ClientError as exc:
            if _no_active_action(exc):
                log.debug("no active lifecycle action to heartbeat")
            else:
                log.warning("RecordLifecycleActionHeartbeat failed: %s", exc)
            return False
        except BotoCoreError as exc:
            log.warning("RecordLifecycleActionHeartbeat failed: %s", exc)
            return False
        log.debug("recorded lifecycle action heartbeat")
        return True

    def set_unhealthy(self) -> None:
        """``SetInstanceHealth(Unhealthy)`` for this instance: the ASG replaces it.

        The grace period is not respected: the agent only calls this after the
        launch phase, when the engine has been failing for a configured time.
        """
        if self.dry_run:
            log.info("dry run: would SetInstanceHealth Unhealthy", extra=self._params())
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().set_instance_health(
                InstanceId=self.instance_id,
                HealthStatus="Unhealthy",
                ShouldRespectGracePeriod=False,
            )
        except (BotoCoreError, ClientError) as exc:
            raise LifecycleError(f"SetInstanceHealth: {exc}") from None

    def describe_hook(self) -> dict[str, Any] | None:
        """The hook as the ASG knows it (``spotrelay agent check``); None if absent."""
        hooks = self.client().describe_lifecycle_hooks(
            AutoScalingGroupName=self.asg_name, LifecycleHookNames=[self.hook_name]
        )["LifecycleHooks"]
        return hooks[0] if hooks else None
