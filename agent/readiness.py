"""The launch readiness gate: the ASG's launch hook is completed only once the node serves.

With an ``autoscaling:EC2_INSTANCE_LAUNCHING`` hook the instance waits in
``Pending:Wait`` until someone completes the action. The agent completes it
with ``CONTINUE`` only when

- the engine answers ``/health`` and lists the model (the same test that
  makes the agent report ``ready``), and
- the routers have acknowledged a ``ready`` heartbeat: at least one router,
  and every router whose last heartbeat succeeded (a router that is down
  does not keep new nodes out of service; one that answers but has not yet
  taken the node as ready does).

Until then it records a lifecycle heartbeat every
``lifecycle.heartbeat_interval_s`` (the hook's own timeout is then only the
limit for a node whose agent never starts). When ``lifecycle.launch_timeout_s``
passes first, it completes the action with ``ABANDON``: the ASG terminates
the instance and launches another. Capacity rebalancing and instance refresh
count a node as in service only after this, so they never retire a serving
node for one that has not loaded the model yet.

:class:`LaunchGate` and :class:`RouterAcks` decide without I/O (clock
injected); :class:`ReadinessWatch` is the thread that asks and acts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from prometheus_client import Gauge

from spotrelay.core.protocol import NodeState
from spotrelay.core.ticker import Ticker

from .lifecycle import LifecycleError, LifecycleHook
from .metrics import AgentMetrics
from .ports import DrainControl, Notifier
from .selfheal import Healer, SelfHeal
from .settings import AgentConfig

log = logging.getLogger("spotrelay.agent.readiness")


class RouterAcks:
    """Which routers have taken this node as ``ready``; fed by every heartbeat result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ok: dict[str, bool] = {}
        self._ready: set[str] = set()

    def record(self, router: str, state: NodeState, ok: bool) -> None:
        with self._lock:
            self._last_ok[router] = ok
            if ok and state == NodeState.READY:
                self._ready.add(router)
            elif ok:
                self._ready.discard(router)

    def ready_on_routers(self) -> bool:
        """At least one router, and every reachable router, acknowledged ``ready``."""
        with self._lock:
            reachable = {r for r, ok in self._last_ok.items() if ok}
            return bool(self._ready) and reachable <= self._ready

    def any_ready(self) -> bool:
        with self._lock:
            return bool(self._ready)


class Action(Enum):
    WAIT = "wait"
    HEARTBEAT = "heartbeat"
    CONTINUE = "CONTINUE"
    ABANDON = "ABANDON"


@dataclass
class LaunchGate:
    """When to heartbeat, CONTINUE or ABANDON the launch action (times from ``started``)."""

    timeout_s: float
    heartbeat_interval_s: float
    started: float
    done: bool = False
    result: str | None = None
    _last_heartbeat: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        # The first tick that finds the node not serving heartbeats at once: the
        # hook learns early that an agent is running.
        self._last_heartbeat = self.started - self.heartbeat_interval_s

    def step(self, now: float, serving: bool) -> Action:
        """The next action; ``serving``: engine ready and ready on the routers."""
        if self.done:
            return Action.WAIT
        if serving:
            return Action.CONTINUE
        if now - self.started >= self.timeout_s:
            return Action.ABANDON
        if now - self._last_heartbeat >= self.heartbeat_interval_s:
            self._last_heartbeat = now
            return Action.HEARTBEAT
        return Action.WAIT

    def finish(self, result: str) -> None:
        self.done = True
        self.result = result


def boot_time() -> float:
    """Host boot (epoch seconds): the start of the cold-start clock."""
    import psutil

    return float(psutil.boot_time())


class StartupClock:
    """Seconds from host boot to engine healthy and to registered, once each (a metric)."""

    def __init__(
        self, gauge: Gauge | None, booted_at: float, clock: Callable[[], float] = time.time
    ):
        self.gauge = gauge
        self.booted_at = booted_at
        self.clock = clock
        self.seen: dict[str, float] = {}
        self.mark("agent_started")

    def mark(self, milestone: str) -> None:
        if milestone in self.seen:
            return
        elapsed = max(0.0, self.clock() - self.booted_at)
        self.seen[milestone] = elapsed
        if self.gauge is not None:
            self.gauge.labels(milestone).set(round(elapsed, 3))
        log.info("startup: %s %.1fs after boot", milestone.replace("_", " "), elapsed)


class ReadinessWatch(Ticker):
    """Ticks the launch gate, the startup clock and the self-heal watchdog.

    ``engine_ready`` / ``engine_healthy`` read the agent's latest engine probe;
    ``heal`` is called once when the watchdog fires; ``busy`` (a drain under
    way) disarms the watchdog, since a drain stops the engine on purpose.
    """

    def __init__(
        self,
        *,
        engine_ready: Callable[[], bool],
        engine_healthy: Callable[[], bool],
        acks: RouterAcks,
        stop: threading.Event,
        interval_s: float,
        hook: LifecycleHook | None,
        gate: LaunchGate | None,
        selfheal: SelfHeal | None,
        heal: Callable[[], None],
        busy: Callable[[], bool] = lambda: False,
        startup: StartupClock | None = None,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval_s, stop=stop, name="readiness")
        self.engine_ready = engine_ready
        self.engine_healthy = engine_healthy
        self.acks = acks
        self.hook = hook
        self.gate = gate
        self.selfheal = selfheal
        self.heal = heal
        self.busy = busy
        self.startup = startup
        self.metrics = metrics
        self.clock = clock
        self.launch_done = threading.Event()
        self._first_ready = False
        self._retry_at = 0.0

    def tick(self) -> None:
        ready = self.engine_ready()
        healthy = self.engine_healthy()
        if self.startup is not None:
            if healthy:
                self.startup.mark("engine_healthy")
            if ready and self.acks.any_ready():
                self.startup.mark("registered")
        now = self.clock()
        serving = ready and self.acks.ready_on_routers()
        if self.gate is not None and not self.gate.done:
            self._gate_step(now, serving)
        elif self.gate is None and serving and not self._first_ready:
            self._first_ready = True
            self.launch_done.set()
        if self.selfheal is not None:
            launch_over = self.gate.done if self.gate is not None else self._first_ready
            armed = launch_over and not self.busy()  # a drain stops the engine on purpose
            if self.selfheal.step(now, healthy=ready, armed=armed):
                self.heal()

    def _gate_step(self, now: float, serving: bool) -> None:
        assert self.gate is not None and self.hook is not None
        action = self.gate.step(now, serving)
        if action is Action.HEARTBEAT:
            ok = self.hook.heartbeat()
            if self.metrics is not None:
                self.metrics.launch_heartbeats.labels("ok" if ok else "failed").inc()
            return
        if action not in (Action.CONTINUE, Action.ABANDON) or now < self._retry_at:
            return
        if action is Action.ABANDON:
            log.error(
                "engine not serving %.0fs after start: abandoning the launch (the ASG "
                "terminates this instance and launches another)",
                self.gate.timeout_s,
            )
        try:
            outcome = self.hook.complete(action.value)
        except LifecycleError as exc:
            self._retry_at = now + min(self.gate.heartbeat_interval_s, 10.0)
            log.warning("launch hook %s failed (will retry): %s", action.value, exc)
            if self.metrics is not None:
                self.metrics.launch_hook.labels(action.value, "failed").inc()
            return
        self.gate.finish(action.value)
        self.launch_done.set()
        if self.metrics is not None:
            self.metrics.launch_hook.labels(action.value, outcome).inc()
        if action is Action.CONTINUE:
            log.info("launch hook completed: CONTINUE (%s); node goes InService", outcome)


@dataclass(frozen=True)
class NodeView:
    """What the watch needs of the running agent (and nothing more of it)."""

    instance_id: str
    region: str | None
    engine_ready: Callable[[], bool]
    engine_healthy: Callable[[], bool]
    acks: RouterAcks
    drain: DrainControl
    metrics: AgentMetrics
    webhook: Notifier
    stop: threading.Event
    dry_run: bool = False


def build_watch(cfg: AgentConfig, node: NodeView) -> ReadinessWatch:
    """The watch for a started agent (kept here so the service only wires it in)."""
    lc = cfg.lifecycle
    region = lc.region or node.region
    asg_name = lc.asg_name or ""  # no group: no hook below is built

    def hook(name: str) -> LifecycleHook:
        return LifecycleHook(
            asg_name, name, node.instance_id, region=region,
            endpoint_url=lc.endpoint_url, dry_run=node.dry_run,
        )  # fmt: skip

    launch = hook(lc.launch_hook_name) if asg_name and lc.launch_hook_name else None
    gate = None
    if launch is not None:
        gate = LaunchGate(lc.launch_timeout_s, lc.heartbeat_interval_s, time.monotonic())
    selfheal = heal = None
    if asg_name and cfg.engine.unhealthy_after_s > 0:
        selfheal = SelfHeal(cfg.engine.unhealthy_after_s)
        heal = Healer(
            drain=node.drain,
            asg=launch or hook(lc.hook_name or ""),
            drain_timeout_s=cfg.drain.timeout_s,
            unhealthy_after_s=cfg.engine.unhealthy_after_s,
            metrics=node.metrics,
            webhook=node.webhook,
            stop=node.stop,
        )
    return ReadinessWatch(
        engine_ready=node.engine_ready,
        engine_healthy=node.engine_healthy,
        acks=node.acks,
        stop=node.stop,
        interval_s=cfg.engine.check_interval_s,
        hook=launch,
        gate=gate,
        selfheal=selfheal,
        heal=heal or (lambda: None),
        busy=lambda: node.drain.active,
        startup=StartupClock(node.metrics.startup, boot_time()),
        metrics=node.metrics,
    )
