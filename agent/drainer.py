"""Performs what the drain machine decides: the drain's thread and all of its I/O.

:class:`Drainer` asks :class:`~.drain.DrainMachine` under one lock and does
the answer outside it: the state file (:mod:`.drainstore`), the webhook,
metrics, waking the heartbeat links, the worker thread, and each step's
calls to the routers, the engine, the lifecycle hook and systemctl. No
decision is taken here beyond how to make a call (threads per router,
retries until the machine's deadline).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from spotrelay.core.backoff import Backoff
from spotrelay.core.interruptions import Event
from spotrelay.core.protocol import NodeReport, NodeState
from spotrelay.core.retry import retry_until

from . import drainstate as act
from .drain import DrainMachine, DrainPolicy
from .drainstate import DrainRequest, DrainState, Effect, StepAction
from .drainstore import StateStore
from .engine import stop_unit
from .lifecycle import LifecycleError
from .metrics import AgentMetrics
from .ports import LifecycleAction, LoadProbe, Notifier, RouterPort
from .routers import RouterError

log = logging.getLogger("spotrelay.agent.drain")


class Drainer:
    """Runs the drain in its own thread; :meth:`request` is safe from any thread."""

    def __init__(
        self,
        machine: DrainMachine,
        *,
        routers: Sequence[RouterPort],
        engine: LoadProbe,
        store: StateStore,
        report_fn: Callable[[NodeState], NodeReport | None],
        lifecycle: LifecycleAction | None = None,
        on_change: Callable[[], None] | None = None,
        quiesce: Callable[[], None] | None = None,
        metrics: AgentMetrics | None = None,
        webhook: Notifier | None = None,
        dry_run: bool = False,
    ) -> None:
        if machine.has_hook != (lifecycle is not None):
            raise ValueError("the machine's has_hook must match the lifecycle hook given")
        self.machine = machine
        self.routers = list(routers)
        self.engine = engine
        self.store = store
        self.report_fn = report_fn
        self.lifecycle = lifecycle
        self.on_change = on_change or (lambda: None)
        self.quiesce = quiesce or (lambda: None)
        self.metrics = metrics
        self.webhook = webhook
        self.dry_run = dry_run
        self._lock = threading.Lock()  # around every call into the machine
        self._store_lock = threading.Lock()  # writes in the machine's order
        self._written = 0
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------ queries
    @property
    def policy(self) -> DrainPolicy:
        return self.machine.policy

    @property
    def state(self) -> DrainState | None:
        return self.machine.state

    @property
    def active(self) -> bool:
        """A drain exists (running or finished): the node must not report ``ready``."""
        return self.machine.active

    @property
    def silenced(self) -> bool:
        """Deregistered (or about to be): no more heartbeats to any router."""
        return self.machine.silenced

    @property
    def finished(self) -> bool:
        return self.machine.finished

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True if no drain is running any more."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.running

    # ---------------------------------------------------------- requests
    def restore(self) -> DrainState | None:
        """Pick up a drain from the state file after a restart (and resume it)."""
        loaded = self.store.load()
        with self._lock:
            effects = self.machine.restore(loaded)
        self.perform(effects)
        return self.machine.state

    def request_event(self, event: Event) -> bool:
        """Drain for an IMDS event; the deadline comes from the event when it has one."""
        return self.submit(self.machine.for_event(event))

    def request_shutdown(self) -> bool:
        """SIGTERM: a short drain that is not persisted (a restarted agent registers again)."""
        return self.submit(self.machine.for_shutdown())

    def request(
        self,
        reason: str,
        kind: str,
        *,
        drain_until: float,
        deadline: float,
        terminating: bool,
        persist: bool = True,
        stop_engine: bool = False,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Start a drain, or merge into the one that exists; True if this started one."""
        req = DrainRequest(
            reason, kind, drain_until, deadline, terminating, persist, stop_engine, detail
        )
        return self.submit(req)

    def submit(self, req: DrainRequest) -> bool:
        with self._lock:
            started, effects = self.machine.request(req)
        self.perform(effects)
        return started

    # ----------------------------------------------------------- effects
    def perform(self, effects: Sequence[Effect]) -> None:
        """Do what the machine asked, in its order."""
        for effect in effects:
            match effect:
                case act.WakeLinks():
                    self.on_change()
                case act.Quiesce():
                    self.quiesce()
                case act.Persist(state=state, seq=seq):
                    self._persist(state, seq)
                case act.ClearState():
                    self.store.clear()
                case act.Notify(kind=kind, fields=fields):
                    if self.webhook is not None:
                        self.webhook.send(kind, **fields)
                case act.StartWorker():
                    self._start_worker()
                case act.WakeWorker():
                    self._wake.set()
                case _:
                    self._count(effect)

    def _count(self, effect: Effect) -> None:
        metrics = self.metrics
        if metrics is None or not isinstance(effect, act.Measure):
            return
        match effect.metric:
            case "drains":
                metrics.drains.labels(effect.label).inc()
            case "draining":
                metrics.draining.set(effect.value)
            case "duration":
                metrics.drain_duration.observe(effect.value)
            case "lifecycle":
                metrics.lifecycle_actions.labels(effect.label).inc()
            case "deadline_missed":
                metrics.drain_deadline_missed.inc()

    def _persist(self, state: DrainState, seq: int) -> None:
        with self._store_lock:
            if seq > self._written:  # a snapshot older than one on disk is stale
                self.store.save(state)
                self._written = seq

    # ------------------------------------------------------------ worker
    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="drain", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    action, effects = self.machine.next_action()
                self.perform(effects)
                if action is None:
                    return
                outcome = self._execute(action)
                with self._lock:
                    effects = self.machine.step_done(action, outcome)
                self.perform(effects)
        except Exception:  # never leave the agent without a log of why
            log.exception("drain step failed unexpectedly")
            with self._lock:
                self.machine.worker_failed()

    def _execute(self, action: StepAction) -> Any:
        match action:
            case act.Announce(until=until):
                report = self.report_fn
                return on_each_router(
                    self.routers, lambda r: announce_to(r, report, until, self.machine.clock)
                )
            case act.WaitIdle():
                return self._wait_idle()
            case act.Deregister(until=until):
                return on_each_router(
                    self.routers, lambda r: delete_from(r, until, self.machine.clock)
                )
            case act.CompleteLifecycle(until=until):
                return self._complete_lifecycle(until)
            case act.StopEngine(unit=unit, timeout_s=timeout_s):
                if unit and self.dry_run:
                    log.info("dry run: would run systemctl stop %s", unit)
                elif unit:
                    stop_unit(unit, timeout_s)
        return None

    # ----------------------------------------------------------- idle wait
    def _wait_idle(self) -> None:
        if self.dry_run:
            load = self.engine.load()
            log.info("dry run: would wait for the engine to go idle (load now %s)", load)
            return
        while True:
            with self._lock:
                over = self.machine.idle_over()
            if over:
                load = self.engine.load()
                log.warning(
                    "drain deadline reached before the engine was idle", extra={"load": load}
                )
                self._count(act.Measure("deadline_missed"))
                return
            idle = self._idle_now()
            with self._lock:
                verdict = self.machine.idle_poll(idle)
            if verdict.done:
                return
            if verdict.heartbeat and self.lifecycle is not None:
                self.lifecycle.heartbeat()
            self._wake.wait(verdict.sleep_s)
            self._wake.clear()

    def _idle_now(self) -> bool:
        load = self.engine.load()
        # No metrics (a dead engine, llama.cpp, most non-vLLM servers): the routers'
        # in-flight count alone decides. No health probe here: on some engines it
        # waits for the running request, and the drain must keep its deadline.
        if load is not None and load.running + load.waiting > 0:
            return False
        in_flight = 0
        for router in self.routers:
            if router.base in self.machine.acked:
                with contextlib.suppress(RouterError):
                    in_flight += router.drain()
        return in_flight == 0

    # ------------------------------------------------------ lifecycle step
    def _complete_lifecycle(self, until: float) -> str:
        assert self.lifecycle is not None
        try:
            return retry_until(
                self.lifecycle.complete,
                retry_on=LifecycleError,
                next_delay=Backoff(0.5, 5.0).next_delay,
                until=until,
                on_retry=lambda exc, delay: log.warning(
                    "lifecycle action failed, retrying in %.1fs: %s", delay, exc
                ),
                clock=self.machine.clock,
            )
        except LifecycleError as exc:
            log.error(
                "could not complete the lifecycle action; the ASG will apply the "
                "hook's default result at its timeout: %s",
                exc,
            )
            return "failed"


# ------------------------------------------------------------- router calls
def on_each_router(
    routers: Sequence[RouterPort], call: Callable[[RouterPort], bool]
) -> frozenset[str]:
    """``call`` on every router at once (a dead one must not delay the others); the
    routers it succeeded on."""
    done: set[str] = set()

    def one(router: RouterPort) -> None:
        if call(router):
            done.add(router.base)

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in routers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return frozenset(done)


def announce_to(
    router: RouterPort,
    report_fn: Callable[[NodeState], NodeReport | None],
    until: float,
    clock: Callable[[], float],
) -> bool:
    """PUT ``draining`` and ``POST /drain`` until acknowledged or ``until``."""

    def announce() -> int:
        report = report_fn(NodeState.DRAINING)
        if report is not None:
            router.put(report)
        return router.drain()

    try:
        in_flight = retry_until(
            announce,
            retry_on=RouterError,
            next_delay=Backoff(0.1, 1.0).next_delay,
            until=until,
            clock=clock,
        )
    except RouterError as exc:
        log.warning("giving up announcing to %s: %s", router.base, exc)
        return False
    log.info("router acknowledged drain", extra={"router": router.base, "in_flight": in_flight})
    return True


def delete_from(router: RouterPort, until: float, clock: Callable[[], float]) -> bool:
    """``DELETE /nodes/{id}``, retried until ``until``."""
    try:
        retry_until(
            router.delete,
            retry_on=RouterError,
            next_delay=Backoff(0.1, 1.0).next_delay,
            until=until,
            clock=clock,
        )
    except RouterError as exc:
        log.warning("could not deregister from %s: %s", router.base, exc)
        return False
    log.info("deregistered", extra={"router": router.base})
    return True
