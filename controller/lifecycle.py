"""Completing the terminate lifecycle action for a node whose agent went silent.

The agent completes its own node's terminate action (CONTINUE) once its drain
is done. A hung or dead agent never does, and the termination then waits out
the hook's timeout. aws-node-termination-handler's queue mode completes the
action itself after its drain; so does the controller, but only where the
agent cannot: when the routers no longer hear the node's heartbeat (or no
longer know the node), and once the routers report no request in flight on
it or the drain deadline has passed.

A Lambda must not sit for minutes waiting for requests to finish, so the wait
is a chain of *check* messages on the interruption queue itself: the
terminate event schedules the first with SQS ``DelaySeconds``; each check
either completes the action, or records a lifecycle heartbeat (silent agent,
requests still in flight: the hook must not time out under them) and sends
the next check, or stops (the agent is alive at the deadline: it owns the
action). Each invocation takes milliseconds. An SQS duplicate of a check
starts a second chain; the second completion meets AWS's "No active Lifecycle
Action" and counts as done, as in the agent. A node no router knows any more
is completed at once: a live agent deregisters only once its node is idle,
right before it completes the action itself, and a dead one's node expired
from the registry after ``registry.ttl_s`` of silence.

:func:`judge` is the decision, without I/O and with the time passed in;
:class:`LifecycleFollowUp` does the calls.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from spotrelay.core.interruptions import LifecycleTerminated
from spotrelay.core.protocol import valid_instance_id

from .interruptions import RetryLater
from .routers import NodeSighting

log = logging.getLogger("spotrelay.controller")

CHECK = "spotrelay.lifecycle-check"  # the marker of a check message's body
NO_ACTIVE = "No active Lifecycle Action"


class Step(StrEnum):
    COMPLETE = "complete"  # CONTINUE now
    WAIT = "wait"  # check again later
    HEARTBEAT = "heartbeat"  # check again later, and keep the hook from timing out
    LEAVE = "leave"  # the agent is alive and owns the action: stop checking


@dataclass(frozen=True)
class PendingAction:
    """One terminate action the controller watches; travels as a check message's body."""

    instance_id: str
    group: str
    hook: str
    token: str
    deadline: float  # epoch s: whatever the routers say, decide by then

    def body(self) -> str:
        return json.dumps({"spotrelay": CHECK, **asdict(self)})

    @classmethod
    def from_doc(cls, doc: Any) -> PendingAction | None:
        """The action a check message names; None for anything else (or a malformed check)."""
        if not isinstance(doc, dict) or doc.get("spotrelay") != CHECK:
            return None
        fields = {k: doc.get(k) for k in ("instance_id", "group", "hook", "token")}
        deadline = doc.get("deadline")
        given = {k: v for k, v in fields.items() if isinstance(v, str) and v}
        if len(given) != len(fields):
            return None
        if not isinstance(deadline, int | float) or not valid_instance_id(given["instance_id"]):
            return None
        return cls(**given, deadline=float(deadline))


@dataclass(frozen=True)
class Verdict:
    step: Step
    reason: str


def judge(
    pending: PendingAction,
    sightings: list[NodeSighting] | None,
    now: float,
    silent_after_s: float,
) -> Verdict:
    """What to do about a pending action, from the routers' view of its node.

    ``sightings`` is None when no router answered: nothing is known, so wait
    (until the deadline). An empty list means the routers answered and none
    knows the node any more: its agent deregistered or went silent past the
    registry's TTL, and there is nothing left to drain.
    """
    alive = bool(sightings) and min(s.silent_s for s in sightings or []) < silent_after_s
    if now >= pending.deadline:
        if alive:
            return Verdict(Step.LEAVE, "drain deadline reached; the agent is alive and completes")
        return Verdict(Step.COMPLETE, "drain deadline reached and the agent is silent")
    if sightings is None:
        return Verdict(Step.WAIT, "no router answered")
    if not sightings:
        return Verdict(Step.COMPLETE, "no router knows the node any more")
    silent = min(s.silent_s for s in sightings)
    if alive:
        return Verdict(Step.WAIT, f"the agent heartbeats ({silent:.0f}s ago) and completes itself")
    in_flight = max(s.in_flight for s in sightings)
    if in_flight == 0:
        return Verdict(Step.COMPLETE, f"agent silent for {silent:.0f}s, no request in flight")
    return Verdict(Step.HEARTBEAT, f"agent silent for {silent:.0f}s, {in_flight} in flight")


class LifecycleFollowUp:
    """Schedules and runs the checks; ``send(body, delay_s)`` puts a message on the queue."""

    def __init__(
        self,
        send: Callable[[str, int], None],
        autoscaling: Any,
        sightings: Callable[[str], list[NodeSighting] | None],
        *,
        check_every_s: int = 10,
        deadline_s: float = 300.0,
        silent_after_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.send = send
        self.autoscaling = autoscaling
        self.sightings = sightings
        self.check_every_s = max(0, min(int(check_every_s), 900))  # SQS DelaySeconds range
        self.deadline_s = deadline_s
        self.silent_after_s = silent_after_s
        self.clock = clock

    def start(self, notice: LifecycleTerminated) -> bool:
        """Schedule the first check for a terminate action; False when there is none to watch."""
        if notice.lifecycle is None:
            return False
        a = notice.lifecycle
        pending = PendingAction(
            notice.instance_id, a.group, a.hook, a.token, self.clock() + self.deadline_s
        )
        self._schedule(pending)
        return True

    def _schedule(self, pending: PendingAction) -> None:
        try:
            self.send(pending.body(), self.check_every_s)
        except Exception as exc:  # the queue is away: the message in hand is retried
            raise RetryLater(f"could not schedule the lifecycle check: {exc}") from exc

    def check_message(self, doc: Any) -> bool:
        """Run the check a queue message carries; False when the message is not a check."""
        pending = PendingAction.from_doc(doc)
        if pending is None:
            return False
        self.check(pending)
        return True

    def check(self, pending: PendingAction) -> Verdict:
        """Run one check: complete, heartbeat and re-check, re-check, or leave it."""
        verdict = judge(
            pending, self.sightings(pending.instance_id), self.clock(), self.silent_after_s
        )
        if verdict.step is Step.COMPLETE:
            self._call("complete_lifecycle_action", pending, LifecycleActionResult="CONTINUE")
        elif verdict.step is Step.WAIT or (
            verdict.step is Step.HEARTBEAT
            and self._call("record_lifecycle_action_heartbeat", pending)
        ):
            self._schedule(pending)
        log.info(
            "terminate action of %s: %s (%s)",
            pending.instance_id,
            verdict.step,
            verdict.reason,
            extra={"instance_id": pending.instance_id, "step": str(verdict.step)},
        )
        return verdict

    def _call(self, method: str, pending: PendingAction, **extra: str) -> bool:
        """One lifecycle call by token; False when AWS has no such action (it is over)."""
        try:
            getattr(self.autoscaling, method)(
                AutoScalingGroupName=pending.group,
                LifecycleHookName=pending.hook,
                LifecycleActionToken=pending.token,
                **extra,
            )
        except Exception as exc:  # botocore's ClientError, without importing botocore here
            if NO_ACTIVE in str(exc):
                log.info("no active lifecycle action for %s (done already)", pending.instance_id)
                return False
            raise RetryLater(f"{method} for {pending.instance_id} failed: {exc}") from exc
        return True
