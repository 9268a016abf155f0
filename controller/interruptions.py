"""Acting on interruption events heard off the node: drain the matching node by instance id.

The events are the agent's (:mod:`spotrelay.core.interruptions`), parsed
from EventBridge by :mod:`spotrelay.core.eventbridge_events`. The same notice
reaches the routers up to five ways: the node's own agent, and here the spot
warning, the rebalance recommendation, the Auto Scaling terminate action and
the state change, each possibly delivered twice (SQS is at-least-once). Two
layers keep the drain from being done twice:

- this handler remembers the instances it drained for ``remember_s`` (in a
  warm Lambda or the demo's process) and does not call the routers again.
  It remembers instances, not events as the agent's event store does: the
  agent decides per event (report a rebalance, plan a maintenance drain) and
  its drain machine merges them into one drain, while here every event but a
  rebalance means the same thing, drain that instance;
- the routers' ``POST /instances/{id}/drain`` reports nodes that were already
  draining (the agent got there first, or another run did) without draining
  them again, and the handler counts that as a duplicate too.

A terminate lifecycle action (drained, or a duplicate of an earlier drain)
also starts the follow-up that completes the action if the node's agent is
silent (:mod:`.lifecycle`); the follow-up's check messages come back through
the same queue and :meth:`InterruptionHandler.handle_message`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from spotrelay.core.eventbridge_events import parse_eventbridge
from spotrelay.core.interruptions import Event, LifecycleTerminated, Rebalance

log = logging.getLogger("spotrelay.controller")


class Outcome(StrEnum):
    DRAINED = "drained"  # at least one router newly stopped routing to the node
    DUPLICATE = "duplicate"  # this handler, the agent or another run drained it already
    NOT_REGISTERED = "not_registered"  # no router knows the instance (not this pool, or gone)
    IGNORED = "ignored"  # an event we do not act on (rebalance with drain_on_rebalance off)
    MALFORMED = "malformed"  # not one of the documented events, nor a check
    LIFECYCLE_CHECKED = "lifecycle_checked"  # a follow-up check ran (completed, or next one sent)


class RetryLater(RuntimeError):
    """A call the message needs failed for now: retry it (SQS redelivers), never drop it."""


class RouterUnreachable(RetryLater):
    """No router could be reached: the event must be retried, not dropped."""


@dataclass(frozen=True)
class DrainResult:
    """What the routers answered to a drain by instance id."""

    newly: int  # nodes that went from routable to draining
    already: int  # nodes that were draining before


class Drainer(Protocol):
    def drain_instance(self, instance_id: str) -> DrainResult: ...


class FollowUp(Protocol):
    """:class:`~.lifecycle.LifecycleFollowUp`, as this handler uses it."""

    def start(self, notice: LifecycleTerminated) -> bool: ...

    def check_message(self, doc: Any) -> bool: ...


class InterruptionHandler:
    """Parses one event, dedupes it and drains its node. Router errors propagate (retry)."""

    def __init__(
        self,
        drainer: Drainer,
        *,
        drain_on_rebalance: bool = False,
        remember_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        followup: FollowUp | None = None,
    ) -> None:
        self.drainer = drainer
        self.followup = followup
        self.drain_on_rebalance = drain_on_rebalance
        self.remember_s = remember_s
        self.clock = clock
        self._drained: dict[str, float] = {}  # instance id -> when we drained it

    def handle(self, event: Any) -> tuple[Outcome, Event | None]:
        """Drain what the event announces; for several instances, the first that drained."""
        notices = parse_eventbridge(event)
        if not notices:
            log.warning("dropped an event that is not a documented interruption event")
            return Outcome.MALFORMED, None
        results = [(self._handle(notice), notice) for notice in notices]
        return next((r for r in results if r[0] is Outcome.DRAINED), results[0])

    def _handle(self, notice: Event) -> Outcome:
        if isinstance(notice, Rebalance) and not self.drain_on_rebalance:
            self._log(notice, Outcome.IGNORED, "drain_on_rebalance is off")
            return Outcome.IGNORED
        outcome = self._drain(notice)
        if self.followup is not None and isinstance(notice, LifecycleTerminated):
            self.followup.start(notice)  # raises RetryLater if it cannot be scheduled
        return outcome

    def _drain(self, notice: Event) -> Outcome:
        now = self.clock()
        self._forget(now)
        if notice.instance_id in self._drained:
            self._log(notice, Outcome.DUPLICATE, "drained by an earlier event")
            return Outcome.DUPLICATE
        result = self.drainer.drain_instance(notice.instance_id)
        if result.newly == 0 and result.already == 0:
            self._log(notice, Outcome.NOT_REGISTERED, "no router knows this instance")
            return Outcome.NOT_REGISTERED
        self._drained[notice.instance_id] = now
        if result.newly == 0:
            self._log(notice, Outcome.DUPLICATE, "the node was already draining")
            return Outcome.DUPLICATE
        self._log(notice, Outcome.DRAINED, f"{result.newly} router(s) stopped routing to it")
        return Outcome.DRAINED

    def handle_message(self, body: str | None, message_id: Any) -> Outcome | None:
        """One queue message's body; None when it must be retried (routers or AWS away)."""
        try:
            event = json.loads(body or "null")
        except ValueError:
            event = None
        try:
            if self.followup is not None and self.followup.check_message(event):
                return Outcome.LIFECYCLE_CHECKED
            return self.handle(event)[0]
        except RetryLater as exc:
            log.warning("message %s left for a retry: %s", message_id, exc)
            return None

    def _forget(self, now: float) -> None:
        for instance, at in list(self._drained.items()):
            if now - at > self.remember_s:
                del self._drained[instance]

    @staticmethod
    def _log(notice: Event, outcome: Outcome, why: str) -> None:
        log.info(
            "%s for %s: %s (%s)",
            notice.kind,
            notice.instance_id,
            outcome,
            why,
            extra={"event_id": notice.event_id, "detail": notice.detail, "outcome": str(outcome)},
        )
