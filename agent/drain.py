"""THE drain state machine: one drain per instance, whatever the number of signals.

Steps, each recorded in a small JSON state file as it completes so an agent
restarted mid-drain carries on where it was:

1. ``announced``: every router is told ``draining`` (the heartbeat links are
   woken at once; the drain thread also PUTs ``draining`` and ``POST /drain`` to
   each router, retrying until acknowledged, ``drain.ack_timeout_s`` or the
   deadline);
2. ``idle``: wait until vLLM reports ``running + waiting = 0`` (twice in a row;
   an engine without ``/metrics`` counts as 0) and the routers report no
   request in flight to us, or until
   ``drain_until`` (= the event's time minus ``drain.safety_margin_s``);
3. ``deregistered``: ``DELETE /nodes/{id}`` on every router; heartbeats stop
   for good (the node is never re-registered by this agent for this boot);
4. ``lifecycle_done``: ``CompleteLifecycleAction`` CONTINUE when the instance
   is terminating and a hook is configured (``RecordLifecycleActionHeartbeat``
   is sent during step 2 while it lasts);
5. ``engine_stopped``: ``systemctl stop`` of the engine unit, if configured.

Deregistration runs *before* the lifecycle action (the original design had
them the other way round, see docs/architecture.md): CONTINUE lets the ASG
terminate the instance straight away, and the DELETE must not race the
shutdown.

A second signal never starts a second drain: it is merged. An earlier
deadline tightens the running drain; a terminating signal arriving after a
non-terminating drain finished (a rebalance drain, then scale-in) adds the
lifecycle step and runs just that.

:class:`DrainMachine` only decides: it does no I/O, reads time through an
injected clock and answers with typed effects and step actions
(:mod:`.drainstate`); :class:`~.drainer.Drainer` performs them. It is not
thread-safe by itself: the executor calls it under one lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spotrelay.core.interruptions import Event, iso

from . import drainstate as act
from .drainstate import DrainRequest, DrainState, Effect, IdleVerdict, Step, StepAction

log = logging.getLogger("spotrelay.agent.drain")

SIGTERM = "sigterm"
QUIET_POLLS = 2  # idle this many polls in a row: one empty moment between requests is not idle


@dataclass
class DrainPolicy:
    """The ``drain.*`` and related settings the machine needs."""

    safety_margin_s: float = 10.0
    timeout_s: float = 300.0
    sigterm_timeout_s: float = 20.0
    ack_timeout_s: float = 10.0
    stop_engine: bool = False
    systemd_unit: str | None = None
    engine_stop_timeout_s: float = 120.0
    lifecycle_heartbeat_s: float = 30.0
    idle_poll_s: float = 0.25


class DrainMachine:
    """The drain's decisions: what each signal, step outcome and idle poll leads to."""

    def __init__(
        self,
        *,
        node_id: str,
        instance_id: str,
        policy: DrainPolicy,
        has_hook: bool,
        boot_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.instance_id = instance_id
        self.policy = policy
        self.has_hook = has_hook
        self.boot_id = boot_id
        self.clock = clock
        self.state: DrainState | None = None
        #: routers that acknowledged the announce: only their in-flight counts matter
        self.acked: frozenset[str] = frozenset()
        self._busy = False  # a worker is running the steps
        self._deregistering = False
        self._seq = 0
        self._quiet = 0
        self._next_beat = 0.0

    # ------------------------------------------------------------ queries
    @property
    def active(self) -> bool:
        """A drain exists (running or finished): the node must not report ``ready``."""
        return self.state is not None

    @property
    def silenced(self) -> bool:
        """Deregistered (or about to be): no more heartbeats to any router."""
        return self._deregistering or (self.state is not None and self.state.deregistered)

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished_at is not None

    def pending(self) -> list[Step]:
        return self.state.pending(self.has_hook) if self.state is not None else []

    def _persist(self) -> list[Effect]:
        assert self.state is not None
        if not self.state.persist:
            return []
        self._seq += 1
        return [act.Persist(self.state.snapshot(), self._seq)]

    # ----------------------------------------------------------- restore
    def restore(self, loaded: DrainState | None) -> list[Effect]:
        """Take up a drain read from the state file after a restart."""
        if loaded is None:
            return []
        if loaded.instance_id != self.instance_id:
            log.info("ignoring drain state of another instance (%s)", loaded.instance_id)
            return [act.ClearState()]
        if self.boot_id and loaded.boot_id and loaded.boot_id != self.boot_id:
            log.info("ignoring drain state from a previous boot (instance was stopped/started)")
            return [act.ClearState()]
        self.state = loaded
        self._deregistering = loaded.deregistered
        pending = self.pending()
        effects: list[Effect] = []
        if pending:
            log.warning(
                "resuming drain after restart",
                extra={"reasons": ",".join(loaded.reasons), "pending": ",".join(pending)},
            )
            self._busy = True
            effects.append(act.StartWorker(resumed=True))
        else:
            log.info("drain already finished for this instance; staying out of service")
        effects.append(act.Measure("draining", float(bool(pending))))
        return effects

    # ----------------------------------------------------------- requests
    def for_event(self, event: Event) -> DrainRequest:
        """The drain an IMDS event asks for; the deadline comes from the event when it has one."""
        if event.deadline is not None:
            deadline = event.deadline
            drain_until = deadline - self.policy.safety_margin_s
        else:
            drain_until = self.clock() + self.policy.timeout_s
            deadline = drain_until + self.policy.safety_margin_s
        return DrainRequest(
            event.key,
            event.kind,
            drain_until=drain_until,
            deadline=deadline,
            terminating=event.terminating,
            stop_engine=self.policy.stop_engine,
            detail=event.describe(),
        )

    def for_shutdown(self) -> DrainRequest:
        """SIGTERM: a short drain that is not persisted (a restarted agent registers again)."""
        drain_until = self.clock() + self.policy.sigterm_timeout_s
        return DrainRequest(
            SIGTERM,
            SIGTERM,
            drain_until=drain_until,
            deadline=drain_until + min(5.0, self.policy.safety_margin_s),
            terminating=False,
            persist=False,
        )

    def request(self, req: DrainRequest) -> tuple[bool, list[Effect]]:
        """Start a drain, or merge into the one that exists; True if this started one."""
        if self.state is None:
            return True, self._start(req)
        state = self.state
        changed = self._merge(state, req)
        if req.detail and req.reason not in [e.get("key") for e in state.events]:
            state.events.append(req.detail)
        if not changed:
            return False, []
        effects: list[Effect] = []
        if self.pending() and not self._busy:
            state.finished_at = None  # e.g. the lifecycle step after a rebalance drain
            self._busy = True
            effects = [*self._persist(), act.StartWorker()]
        else:
            effects = self._persist()
        return False, [*effects, act.WakeWorker()]

    def _start(self, req: DrainRequest) -> list[Effect]:
        state = self.state = DrainState(
            instance_id=self.instance_id,
            node_id=self.node_id,
            kind=req.kind,
            reasons=[req.reason],
            started_at=self.clock(),
            drain_until=req.drain_until,
            deadline=req.deadline,
            terminating=req.terminating,
            persist=req.persist,
            stop_engine=req.stop_engine,
            boot_id=self.boot_id,
            events=[req.detail] if req.detail else [],
        )
        log.warning(
            "drain started",
            extra={
                "reason": req.reason,
                "drain_until": iso(req.drain_until),
                "deadline": iso(req.deadline),
                "in_s": round(req.drain_until - self.clock(), 1),
            },
        )
        self._busy = True
        return [
            act.WakeLinks(),  # heartbeats say "draining" now, before any disk I/O
            *self._persist(),
            act.Measure("drains", label=req.kind),
            act.Measure("draining", 1.0),
            act.Notify("drain_started", {"drain": state.to_json()}),
            act.StartWorker(),
        ]

    def _merge(self, state: DrainState, req: DrainRequest) -> bool:
        changed = False
        if req.reason not in state.reasons:
            state.reasons.append(req.reason)
            changed = True
            log.info("signal merged into the running drain", extra={"reason": req.reason})
        if req.drain_until < state.drain_until:
            state.drain_until = req.drain_until
            state.deadline = min(state.deadline, req.deadline)
            changed = True
            log.info("drain deadline moved earlier", extra={"drain_until": iso(req.drain_until)})
        for flag in ("terminating", "persist", "stop_engine"):
            if getattr(req, flag) and not getattr(state, flag):
                setattr(state, flag, True)
                changed = True
        return changed

    # -------------------------------------------------------------- steps
    def next_action(self) -> tuple[StepAction | None, list[Effect]]:
        """The next step's I/O and what to do before it; None: the drain is finished."""
        assert self.state is not None
        state = self.state
        pending = self.pending()
        now = self.clock()
        if not pending:
            state.finished_at = now
            self._busy = False
            return None, [*self._persist(), *self._finished(now)]
        step = pending[0]
        log.info("drain step: %s", step)
        match step:
            case Step.ANNOUNCE:
                until = min(now + self.policy.ack_timeout_s, state.deadline)
                # The heartbeat links send "draining" right now.
                return act.Announce(until), [act.WakeLinks()]
            case Step.WAIT_IDLE:
                self._quiet = 0
                self._next_beat = now + self.policy.lifecycle_heartbeat_s
                return act.WaitIdle(), []
            case Step.DEREGISTER:
                self._deregistering = True
                # A router that does not answer drops us by TTL anyway: do not let
                # it hold up the lifecycle action for the whole deadline.
                # No heartbeat may land after the DELETE.
                until = max(min(state.deadline, now + self.policy.ack_timeout_s), now + 1.0)
                return act.Deregister(until), [act.Quiesce()]
            case Step.COMPLETE_LIFECYCLE:
                return act.CompleteLifecycle(until=max(state.deadline, now + 5.0)), []
            case _:
                unit = self.policy.systemd_unit
                return act.StopEngine(unit, self.policy.engine_stop_timeout_s), []

    def step_done(self, action: StepAction, outcome: Any = None) -> list[Effect]:
        """Record a finished step: ``outcome`` is the acknowledging routers (announce) or the
        lifecycle result."""
        assert self.state is not None
        state = self.state
        effects: list[Effect] = []
        match action:
            case act.Announce():
                self.acked = frozenset(outcome or ())
                state.announced = True
            case act.WaitIdle():
                state.idle = True
            case act.Deregister():
                state.deregistered = True
                effects.append(act.WakeLinks())
            case act.CompleteLifecycle():
                state.lifecycle_result = str(outcome)
                state.lifecycle_done = True
                effects.append(act.Measure("lifecycle", label=str(outcome)))
            case act.StopEngine():
                state.engine_stopped = True
        return [*effects, *self._persist()]

    def worker_failed(self) -> None:
        """The worker died on an unexpected error: a later signal may start it again."""
        self._busy = False

    def _finished(self, now: float) -> list[Effect]:
        assert self.state is not None
        state = self.state
        duration = now - state.started_at
        log.warning(
            "drain finished",
            extra={
                "reasons": ",".join(state.reasons),
                "duration_s": round(duration, 2),
                "lifecycle": state.lifecycle_result,
                "before_deadline_s": round(state.deadline - now, 2),
            },
        )
        return [
            act.Measure("duration", duration),
            act.Measure("draining", 0.0),
            act.Notify("drain_finished", {"drain": state.to_json(), "duration_s": duration}),
        ]

    # ---------------------------------------------------------- idle wait
    def idle_over(self) -> bool:
        """``drain_until`` reached: stop waiting for in-flight work."""
        return self.state is not None and self.clock() >= self.state.drain_until

    def idle_poll(self, idle: bool) -> IdleVerdict:
        """One poll of step 2; ``idle``: no load on the engine, nothing in flight on the routers."""
        assert self.state is not None
        now = self.clock()
        self._quiet = self._quiet + 1 if idle else 0
        if self._quiet >= QUIET_POLLS:
            log.info("engine idle; in-flight work finished")
            return IdleVerdict(done=True)
        beat = self.state.terminating and self.has_hook and now >= self._next_beat
        if beat:
            self._next_beat = now + self.policy.lifecycle_heartbeat_s
        sleep_s = min(self.policy.idle_poll_s, max(0.0, self.state.drain_until - now))
        return IdleVerdict(done=False, heartbeat=beat, sleep_s=sleep_s)
