"""THE drain state machine: one drain per instance, whatever the number of signals.

Steps, each recorded in a small JSON state file as it completes so an agent
restarted mid-drain carries on where it was:

1. ``announced``: every router is told ``draining`` (the heartbeat links are
   woken at once; this thread also PUTs ``draining`` and ``POST /drain`` to
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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from spotrelay.core.backoff import Backoff
from spotrelay.core.protocol import NodeReport, NodeState
from spotrelay.core.retry import retry_until

from .engine import EngineProbe, stop_unit
from .events import Event, iso
from .lifecycle import LifecycleError, LifecycleHook
from .routers import RouterClient, RouterError

log = logging.getLogger("spotrelay.agent.drain")

T = TypeVar("T")

STATE_FILE = "drain.json"
STATE_VERSION = 1
SIGTERM = "sigterm"


class Step(StrEnum):
    """The drain's steps, in the order they run."""

    ANNOUNCE = "announce"
    WAIT_IDLE = "wait_idle"
    DEREGISTER = "deregister"
    COMPLETE_LIFECYCLE = "complete_lifecycle"
    STOP_ENGINE = "stop_engine"


def read_boot_id() -> str | None:
    """The kernel's boot id: a state file from an earlier boot is stale.

    A spot instance that was *stopped* (action ``stop``/``hibernate``) comes
    back with the same instance id; its old drain must not keep it out.
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


@dataclass
class DrainState:
    """What survives a restart; one JSON object in ``<state_dir>/drain.json``."""

    instance_id: str
    node_id: str
    kind: str
    reasons: list[str]
    started_at: float
    drain_until: float
    deadline: float
    terminating: bool = False
    persist: bool = True
    stop_engine: bool = False
    boot_id: str | None = None
    announced: bool = False
    idle: bool = False
    deregistered: bool = False
    lifecycle_done: bool = False
    lifecycle_result: str | None = None
    engine_stopped: bool = False
    finished_at: float | None = None
    version: int = STATE_VERSION
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["deadline_iso"] = iso(self.deadline)
        doc["drain_until_iso"] = iso(self.drain_until)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DrainState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def pending(self, has_hook: bool) -> list[Step]:
        """Steps still to run, in order."""
        steps = []
        if not self.announced:
            steps.append(Step.ANNOUNCE)
        if not self.idle:
            steps.append(Step.WAIT_IDLE)
        if not self.deregistered:
            steps.append(Step.DEREGISTER)
        if self.terminating and has_hook and not self.lifecycle_done:
            steps.append(Step.COMPLETE_LIFECYCLE)
        if self.stop_engine and not self.engine_stopped:
            steps.append(Step.STOP_ENGINE)
        return steps


class StateStore:
    """The state file, written atomically (temp file, fsync, rename); ``path=None``: memory."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> DrainState | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            return DrainState.from_json(doc)
        except (OSError, ValueError, TypeError) as exc:
            bad = self.path.with_suffix(".corrupt")
            log.error("unreadable drain state %s (%s); moved to %s", self.path, exc, bad)
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            return None

    def save(self, state: DrainState) -> None:
        if self.path is None or not state.persist:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".drain-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(state.to_json(), fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def clear(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


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
    """Runs the drain in its own thread; :meth:`request` is safe from any thread."""

    def __init__(
        self,
        *,
        node_id: str,
        instance_id: str,
        routers: list[RouterClient],
        engine: EngineProbe,
        store: StateStore,
        policy: DrainPolicy,
        report_fn: Callable[[NodeState], NodeReport | None],
        lifecycle: LifecycleHook | None = None,
        on_change: Callable[[], None] | None = None,
        quiesce: Callable[[], None] | None = None,
        metrics: Any = None,
        webhook: Any = None,
        dry_run: bool = False,
        boot_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.instance_id = instance_id
        self.routers = routers
        self.engine = engine
        self.store = store
        self.policy = policy
        self.report_fn = report_fn
        self.lifecycle = lifecycle
        self.on_change = on_change or (lambda: None)
        self.quiesce = quiesce or (lambda: None)
        self.metrics = metrics
        self.webhook = webhook
        self.dry_run = dry_run
        self.boot_id = boot_id
        self.clock = clock
        self.state: DrainState | None = None
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._deregistering = False
        self._acked: set[str] = set()

    # ------------------------------------------------------------ queries
    @property
    def active(self) -> bool:
        """A drain exists (running or finished): the node must not report ``ready``."""
        return self.state is not None

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    @property
    def silenced(self) -> bool:
        """Deregistered (or about to be): no more heartbeats to any router."""
        return self._deregistering or (self.state is not None and self.state.deregistered)

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished_at is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread; True if no drain is running any more."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return not self.running

    # ----------------------------------------------------------- restore
    def restore(self) -> DrainState | None:
        """Pick up a drain from the state file after a restart (and resume it)."""
        state = self.store.load()
        if state is None:
            return None
        if state.instance_id != self.instance_id:
            log.info("ignoring drain state of another instance (%s)", state.instance_id)
            self.store.clear()
            return None
        if self.boot_id and state.boot_id and state.boot_id != self.boot_id:
            log.info("ignoring drain state from a previous boot (instance was stopped/started)")
            self.store.clear()
            return None
        with self._lock:
            self.state = state
            if state.deregistered:
                self._deregistering = True
        pending = state.pending(self.lifecycle is not None)
        if pending:
            log.warning(
                "resuming drain after restart",
                extra={"reasons": ",".join(state.reasons), "pending": ",".join(pending)},
            )
            self._start_worker(resumed=True)
        else:
            log.info("drain already finished for this instance; staying out of service")
        if self.metrics:
            self.metrics.draining.set(1 if pending else 0)
        return state

    # ----------------------------------------------------------- requests
    def request_event(self, event: Event) -> bool:
        """Drain for an IMDS event; the deadline comes from the event when it has one."""
        now = self.clock()
        if event.deadline is not None:
            deadline = event.deadline
            drain_until = deadline - self.policy.safety_margin_s
        else:
            drain_until = now + self.policy.timeout_s
            deadline = drain_until + self.policy.safety_margin_s
        return self.request(
            event.key,
            event.kind,
            drain_until=drain_until,
            deadline=deadline,
            terminating=event.terminating,
            stop_engine=self.policy.stop_engine,
            detail=event.describe(),
        )

    def request_shutdown(self) -> bool:
        """SIGTERM: a short drain that is not persisted (a restarted agent registers again)."""
        now = self.clock()
        drain_until = now + self.policy.sigterm_timeout_s
        return self.request(
            SIGTERM,
            SIGTERM,
            drain_until=drain_until,
            deadline=drain_until + min(5.0, self.policy.safety_margin_s),
            terminating=False,
            persist=False,
            stop_engine=False,
        )

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
        with self._lock:
            state = self.state
            if state is None:
                state = self.state = DrainState(
                    instance_id=self.instance_id,
                    node_id=self.node_id,
                    kind=kind,
                    reasons=[reason],
                    started_at=self.clock(),
                    drain_until=drain_until,
                    deadline=deadline,
                    terminating=terminating,
                    persist=persist,
                    stop_engine=stop_engine,
                    boot_id=self.boot_id,
                    events=[detail] if detail else [],
                )
                self.on_change()  # heartbeats say "draining" now, before any disk I/O
                self.store.save(state)
                log.warning(
                    "drain started",
                    extra={
                        "reason": reason,
                        "drain_until": iso(drain_until),
                        "deadline": iso(deadline),
                        "in_s": round(drain_until - self.clock(), 1),
                    },
                )
                if self.metrics:
                    self.metrics.drains.labels(kind).inc()
                    self.metrics.draining.set(1)
                if self.webhook:
                    self.webhook.send("drain_started", drain=state.to_json())
                self._start_worker()
                return True
            changed = self._merge(state, reason, drain_until, deadline, terminating, persist)
            changed |= stop_engine and not state.stop_engine
            state.stop_engine = state.stop_engine or stop_engine
            if detail and reason not in [e.get("key") for e in state.events]:
                state.events.append(detail)
            if not changed:
                return False
            self.store.save(state)
            if state.pending(self.lifecycle is not None) and not self.running:
                state.finished_at = None
                self.store.save(state)
                self._start_worker()
            self._wake.set()
            return False

    def _merge(
        self,
        state: DrainState,
        reason: str,
        drain_until: float,
        deadline: float,
        terminating: bool,
        persist: bool,
    ) -> bool:
        changed = False
        if reason not in state.reasons:
            state.reasons.append(reason)
            changed = True
            log.info("signal merged into the running drain", extra={"reason": reason})
        if drain_until < state.drain_until:
            state.drain_until = drain_until
            state.deadline = min(state.deadline, deadline)
            changed = True
            log.info("drain deadline moved earlier", extra={"drain_until": iso(drain_until)})
        if terminating and not state.terminating:
            state.terminating = True
            changed = True
        if persist and not state.persist:
            state.persist = True
            changed = True
        return changed

    # ------------------------------------------------------------- worker
    def _start_worker(self, resumed: bool = False) -> None:
        if self.running:
            return
        self._worker = threading.Thread(
            target=self._run, args=(resumed,), name="drain", daemon=True
        )
        self._worker.start()

    def _save(self) -> None:
        with self._lock:
            if self.state is not None:
                self.store.save(self.state)

    def _run(self, resumed: bool) -> None:
        try:
            self._steps()
        except Exception:  # never leave the agent without a log of why
            log.exception("drain step failed unexpectedly")
            return
        state = self.state
        assert state is not None
        duration = self.clock() - state.started_at
        log.warning(
            "drain finished",
            extra={
                "reasons": ",".join(state.reasons),
                "duration_s": round(duration, 2),
                "lifecycle": state.lifecycle_result,
                "before_deadline_s": round(state.deadline - self.clock(), 2),
            },
        )
        if self.metrics:
            self.metrics.drain_duration.observe(duration)
            self.metrics.draining.set(0)
        if self.webhook:
            self.webhook.send("drain_finished", drain=state.to_json(), duration_s=duration)

    def _steps(self) -> None:
        has_hook = self.lifecycle is not None
        while True:
            with self._lock:
                state = self.state
                assert state is not None
                pending = state.pending(has_hook)
                if not pending:
                    state.finished_at = self.clock()
                    self.store.save(state)
                    return
            step = pending[0]
            log.info("drain step: %s", step)
            self._run_step(step, state)
            self._save()

    def _run_step(self, step: Step, state: DrainState) -> None:
        match step:
            case Step.ANNOUNCE:
                self._announce(state)
            case Step.WAIT_IDLE:
                self._wait_idle(state)
            case Step.DEREGISTER:
                self._deregister(state)
            case Step.COMPLETE_LIFECYCLE:
                self._complete_lifecycle(state)
            case Step.STOP_ENGINE:
                self._stop_engine(state)

    # step 1
    def _announce(self, state: DrainState) -> None:
        self.on_change()  # heartbeat links send "draining" right now
        until = min(self.clock() + self.policy.ack_timeout_s, state.deadline)
        threads = [
            threading.Thread(target=self._announce_one, args=(r, until), daemon=True)
            for r in self.routers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        missing = [r.base for r in self.routers if r.base not in self._acked]
        if missing:
            log.error("routers did not acknowledge the drain: %s", ", ".join(missing))
        state.announced = True

    def _announce_one(self, router: RouterClient, until: float) -> None:
        def announce() -> int:
            report = self.report_fn(NodeState.DRAINING)
            if report is not None:
                router.put(report)
            return router.drain()

        try:
            in_flight = self._retry(announce, RouterError, Backoff(0.1, 1.0), until)
        except RouterError as exc:
            log.warning("giving up announcing to %s: %s", router.base, exc)
            return
        self._acked.add(router.base)
        log.info("router acknowledged drain", extra={"router": router.base, "in_flight": in_flight})

    def _retry(
        self,
        call: Callable[[], T],
        errors: type[Exception],
        backoff: Backoff,
        until: float,
        on_retry: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Retry ``call`` with ``backoff`` until ``until`` on the machine's clock."""
        return retry_until(
            call,
            retry_on=errors,
            next_delay=backoff.next_delay,
            until=until,
            on_retry=on_retry,
            clock=self.clock,
        )

    # step 2
    def _wait_idle(self, state: DrainState) -> None:
        if self.dry_run:
            load = self.engine.load()
            log.info("dry run: would wait for the engine to go idle (load now %s)", load)
            state.idle = True
            return
        quiet = 0
        next_lifecycle_beat = time.monotonic() + self.policy.lifecycle_heartbeat_s
        while True:
            now = self.clock()
            if now >= state.drain_until:
                load = self.engine.load()
                log.warning(
                    "drain deadline reached before the engine was idle", extra={"load": load}
                )
                if self.metrics:
                    self.metrics.drain_deadline_missed.inc()
                break
            if self._idle_now():
                quiet += 1
                if quiet >= 2:
                    log.info("engine idle; in-flight work finished")
                    break
            else:
                quiet = 0
            if (
                state.terminating
                and self.lifecycle is not None
                and time.monotonic() >= next_lifecycle_beat
            ):
                self.lifecycle.heartbeat()
                next_lifecycle_beat = time.monotonic() + self.policy.lifecycle_heartbeat_s
            self._wake.wait(min(self.policy.idle_poll_s, max(0.0, state.drain_until - now)))
            self._wake.clear()
        state.idle = True

    def _idle_now(self) -> bool:
        load = self.engine.load()
        # No metrics (a dead engine, llama.cpp, most non-vLLM servers): the routers'
        # in-flight count alone decides. No health probe here: on some engines it
        # waits for the running request, and the drain must keep its deadline.
        if load is not None and load.running + load.waiting > 0:
            return False
        in_flight = 0
        for router in self.routers:
            if router.base in self._acked:
                with contextlib.suppress(RouterError):
                    in_flight += router.drain()
        return in_flight == 0

    # step 3
    def _deregister(self, state: DrainState) -> None:
        self._deregistering = True
        self.quiesce()  # no heartbeat may land after the DELETE
        # A router that does not answer drops us by TTL anyway: do not let it hold up
        # the lifecycle action for the whole deadline.
        now = self.clock()
        until = max(min(state.deadline, now + self.policy.ack_timeout_s), now + 1.0)
        threads = [
            threading.Thread(target=self._delete_one, args=(r, until), daemon=True)
            for r in self.routers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state.deregistered = True
        self.on_change()

    def _delete_one(self, router: RouterClient, until: float) -> None:
        try:
            self._retry(router.delete, RouterError, Backoff(0.1, 1.0), until)
        except RouterError as exc:
            log.warning("could not deregister from %s: %s", router.base, exc)
            return
        log.info("deregistered", extra={"router": router.base})

    # step 4
    def _complete_lifecycle(self, state: DrainState) -> None:
        assert self.lifecycle is not None
        until = max(state.deadline, self.clock() + 5.0)
        try:
            result = self._retry(
                self.lifecycle.complete,
                LifecycleError,
                Backoff(0.5, 5.0),
                until,
                on_retry=lambda exc, delay: log.warning(
                    "lifecycle action failed, retrying in %.1fs: %s", delay, exc
                ),
            )
        except LifecycleError as exc:
            log.error(
                "could not complete the lifecycle action; the ASG will apply the "
                "hook's default result at its timeout: %s",
                exc,
            )
            result = "failed"
        state.lifecycle_result = result
        state.lifecycle_done = True
        if self.metrics:
            self.metrics.lifecycle_actions.labels(result).inc()

    # step 5
    def _stop_engine(self, state: DrainState) -> None:
        unit = self.policy.systemd_unit
        if not unit:
            pass
        elif self.dry_run:
            log.info("dry run: would run systemctl stop %s", unit)
        else:
            stop_unit(unit, self.policy.engine_stop_timeout_s)
        state.engine_stopped = True
