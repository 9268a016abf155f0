"""The Lambda entry point: ``spotrelay.controller.handler.handler``.

Two triggers reach it:

- the EventBridge schedule (``rate(1 minute)`` by default): one on-demand
  fallback decision (:meth:`Controller.run_fallback`);
- the SQS event source mapping of the interruption queue: a batch of
  EventBridge events, each drained by instance id, and the controller's own
  delayed lifecycle checks (:mod:`.lifecycle`); a record whose routers (or
  AWS calls) failed is reported back as a batch item failure, so SQS
  redelivers it (and, after ``maxReceiveCount``, moves it to the DLQ).

The node token is read from its SSM parameter at a cold start and again
whenever a router answers 401 (it was rotated).

Every decision is logged with its reason and published as CloudWatch metrics
(one ``PutMetricData`` per invocation). A metrics failure is logged and never
fails the invocation: the drain or the capacity change already happened.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from .aws import AsgGateway, put_metrics
from .fallback import Decision, FallbackDecider
from .interruptions import InterruptionHandler, Outcome
from .lifecycle import LifecycleFollowUp
from .routers import RouterFleet
from .settings import ControllerSettings, from_env

log = logging.getLogger("spotrelay.controller")


class Controller:
    """Everything one warm Lambda container keeps between invocations."""

    def __init__(
        self,
        settings: ControllerSettings,
        clients: Callable[[str], Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.autoscaling = clients("autoscaling")
        self.cloudwatch = clients("cloudwatch")
        source = token_source(settings, clients)
        self.routers = RouterFleet(
            list(settings.router_urls),
            settings.node_token or (source() if source else ""),
            timeout_s=settings.router_timeout_s,
            token_source=source,
        )
        self.gateway = AsgGateway(self.autoscaling, settings.asg_name, clients("ec2"))
        self.decider = FallbackDecider(settings.policy, clock)
        followup = None
        if settings.queue_url:
            followup = LifecycleFollowUp(
                sqs_sender(clients("sqs"), settings.queue_url),
                self.autoscaling,
                self.routers.sightings,
                check_every_s=settings.lifecycle_check_every_s,
                deadline_s=settings.lifecycle_deadline_s,
                silent_after_s=settings.agent_silent_after_s,
                clock=clock,
            )
        self.interruptions = InterruptionHandler(
            self.routers, drain_on_rebalance=settings.drain_on_rebalance, followup=followup
        )

    def run_fallback(self) -> Decision | None:
        if not self.settings.fallback_enabled:
            return None
        ready = self.routers.ready_nodes() if self.routers.urls else None
        obs, state = self.gateway.observe(ready)
        decision = self.decider.decide(obs, state)
        applied = self.gateway.apply(decision, state)
        log.info(
            "fallback %s: %s%s",
            decision.action,
            decision.reason,
            "" if applied else " (not applied: the group changed meanwhile)",
            extra={
                "action": str(decision.action),
                "on_demand_base": decision.target_base,
                "ready_nodes": "-" if ready is None else ready,
            },
        )
        metrics = [
            ("FallbackDecisions", 1, {"Action": str(decision.action)}),
            ("OnDemandBaseCapacity", decision.target_base if applied else obs.on_demand_base, {}),
            ("FailedRecoveryProbes", (decision.state if applied else state).failed_probes, {}),
        ]
        if ready is not None:
            metrics.append(("ReadyNodes", ready, {}))
        self._publish(metrics)
        return decision

    def on_records(self, records: list[Mapping[str, Any]]) -> dict[str, Any]:
        failures: list[dict[str, str]] = []
        outcomes: dict[str, int] = {}
        for record in records:
            outcome = self.interruptions.handle_message(record.get("body"), record.get("messageId"))
            if outcome is None:
                failures.append({"itemIdentifier": str(record.get("messageId"))})
                continue
            outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + 1
        self._publish([("InterruptionEvents", n, {"Outcome": k}) for k, n in outcomes.items()])
        return {"batchItemFailures": failures}

    def _publish(self, data: list[tuple[str, float, dict]]) -> None:
        try:
            put_metrics(self.cloudwatch, self.settings.metric_namespace, self.settings.pool, data)
        except Exception as exc:  # metrics never fail a run whose work is done
            log.warning("could not publish controller metrics: %s", exc)


def token_source(
    settings: ControllerSettings, clients: Callable[[str], Any]
) -> Callable[[], str] | None:
    """Reads the node token from its SSM parameter; None when it is given directly (tests)."""
    if settings.node_token is not None or not settings.node_token_parameter:
        return None
    ssm, name = clients("ssm"), settings.node_token_parameter

    def read() -> str:
        doc = ssm.get_parameter(Name=name, WithDecryption=True)
        return str(doc["Parameter"]["Value"]).strip()

    return read


def sqs_sender(sqs: Any, queue_url: str) -> Callable[[str, int], None]:
    """``send(body, delay_s)`` onto the interruption queue."""

    def send(body: str, delay_s: int) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body, DelaySeconds=delay_s)

    return send


def boto3_clients(settings: ControllerSettings) -> Callable[[str], Any]:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3})

    def make(service: str) -> Any:
        return boto3.client(service, endpoint_url=settings.endpoint_url, config=config)

    return make


_controller: Controller | None = None


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Lambda handler: SQS records are interruptions, anything else is the schedule."""
    global _controller
    if _controller is None:
        logging.getLogger().setLevel(logging.INFO)
        settings = from_env(os.environ)
        _controller = Controller(settings, boto3_clients(settings))
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        return _controller.on_records(event["Records"])
    decision = _controller.run_fallback()
    if decision is None:
        return {"action": "disabled"}
    return {
        "action": str(decision.action),
        "on_demand_base": decision.target_base,
        "reason": decision.reason,
    }


def reset() -> None:
    """Forget the warm controller (tests change the environment between invocations)."""
    global _controller
    _controller = None


__all__ = ["Controller", "Outcome", "handler", "reset"]
