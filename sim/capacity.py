"""The demo's Auto Scaling group and capacity controller: spot shortages, on-demand
fallback, the return to spot, and interruptions heard through the queue.

:class:`SimulatedAsg` plays the group's launch decisions: below the on-demand
base it launches on-demand, otherwise it tries spot, which fails during the
``--spot-shortage`` window with the scaling-activity message AWS writes
(``InsufficientInstanceCapacity``). :class:`CapacityLoop` runs the real
controller code every tick: the fallback decision
(:class:`~spotrelay.controller.fallback.FallbackDecider`, fed the simulated
activities and the router's ready count) and the interruption queue consumer
(:class:`~spotrelay.controller.queue.QueueConsumer` on a
:class:`~spotrelay.sim.localqueue.LocalQueue`, draining through the router's
``POST /instances/{id}/drain``). When the base rises, every missing node
launches on-demand in the same controller period (the decision counts the
nodes spot does not serve: desired capacity minus live spot nodes). When the
base drops below the on-demand nodes running, the group launches a spot node
and, once it is ready, retires an on-demand node through the termination
hook: its agent drains it first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spotrelay.controller.activities import launch_attempts
from spotrelay.controller.fallback import (
    FallbackDecider,
    FallbackPolicy,
    FallbackState,
    Observation,
)
from spotrelay.controller.interruptions import InterruptionHandler, Outcome
from spotrelay.controller.queue import QueueConsumer
from spotrelay.controller.routers import RouterFleet

from .fleet import LocalFleet, Node
from .localqueue import LocalQueue, spot_warning, state_change

log = logging.getLogger("spotrelay.demo")

SHORTAGE_MESSAGE = (
    "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot "
    "capacity available that matches your request. Launching EC2 instance failed."
)


@dataclass
class CapacityOptions:
    """Demo-scale thresholds: seconds where AWS deployments use minutes."""

    spot_shortage: tuple[float, float] | None = None  # seconds after traffic starts
    fallback_after_s: float = 0.0  # the first period that sees a failed spot launch
    recover_after_s: float = 4.0
    # Failed recovery probes double the wait up to this; 8 s keeps the return to
    # spot inside a 20-30 s demo even when the first probe meets the shortage.
    recover_backoff_max_s: float = 8.0
    step_interval_s: float = 2.0
    retry_s: float = 1.0  # the group retries a failed spot launch this often
    tick_s: float = 0.25  # the controller period: one decision and one group step per tick


class SimulatedAsg:
    """Launch decisions and the scaling-activity history of one mixed-instances group."""

    def __init__(self, shortage: tuple[float, float] | None, t0: float) -> None:
        self.shortage = shortage
        self.t0 = t0  # monotonic time traffic started
        self.on_demand_base = 0
        self.activities: list[dict[str, Any]] = []

    def spot_short(self) -> bool:
        if self.shortage is None:
            return False
        now = time.monotonic() - self.t0
        return self.shortage[0] <= now < self.shortage[1]

    def try_spot(self) -> bool:
        """One spot launch attempt, recorded as a scaling activity."""
        ok = not self.spot_short()
        self._record(ok)
        return ok

    def launched_on_demand(self) -> None:
        self._record(True)

    def _record(self, ok: bool) -> None:
        activity: dict[str, Any] = {
            "Description": "Launching a new EC2 instance"
            + (": (simulated)" if ok else f".  Status Reason: {SHORTAGE_MESSAGE}"),
            "StartTime": time.time(),
            "StatusCode": "Successful" if ok else "Failed",
        }
        if not ok:
            activity["StatusMessage"] = SHORTAGE_MESSAGE
        self.activities.append(activity)


@dataclass
class CapacityRecord:
    """What the capacity side did, for the report (times: seconds since traffic started)."""

    decisions: list[dict[str, Any]] = field(default_factory=list)  # {t, period, action, ...}
    spot_failures: int = 0
    launches: list[dict[str, Any]] = field(default_factory=list)  # {t, period, node, lifecycle}
    retired: list[dict[str, Any]] = field(default_factory=list)  # on-demand nodes retired
    queue: dict[str, int] = field(default_factory=dict)  # outcome -> count
    samples: list[dict[str, Any]] = field(default_factory=list)


class CapacityLoop:
    """Runs the controller's decisions and queue consumer against the local fleet."""

    def __init__(
        self, fleet: LocalFleet, options: CapacityOptions, t0: float, ready_timeout_s: float
    ) -> None:
        self.fleet = fleet
        self.options = options
        self.t0 = t0
        self.ready_timeout_s = ready_timeout_s
        self.asg = SimulatedAsg(options.spot_shortage, t0)
        self.queue = LocalQueue()
        routers = RouterFleet(fleet.control_urls, fleet.token, timeout_s=2)
        self.routers = routers
        self.consumer = QueueConsumer(self.queue, self.queue.url, InterruptionHandler(routers))
        self.decider = FallbackDecider(
            FallbackPolicy(
                fallback_after_s=options.fallback_after_s,
                recover_after_s=options.recover_after_s,
                step_interval_s=options.step_interval_s,
                recover_backoff_max_s=options.recover_backoff_max_s,
            )  # max_on_demand: the desired capacity (the default)
        )
        self.state = FallbackState()
        self.record = CapacityRecord()
        self.desired = len(fleet.nodes)  # the demo's group never scales
        self.period = 0  # controller periods (ticks) since the start
        self.missing = 0  # capacity the group must replace
        # The period of the first failed spot launch while nodes are missing.
        self.missing_failed_at: int | None = None
        self._leaving: set[str] = set()  # noticed or reclaimed: no longer counted as spot
        self._pending: list[threading.Thread] = []
        self._retiring: set[str] = set()
        self._on_launch: list[Callable[[Node], None] | None] = []
        self._next_attempt = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capacity", daemon=True)
        self._last_sample = -1.0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    # -- the group's side ---------------------------------------------------------------
    def request_replacement(self, on_launch: Callable[[Node], None] | None = None) -> None:
        with self._lock:
            self.missing += 1
            self._on_launch.append(on_launch)

    def lost(self, node: Node) -> None:
        """The group replaces this node: it no longer counts as spot capacity."""
        with self._lock:
            self._leaving.add(node.name)

    def notice(self, node: Node) -> None:
        """What EventBridge puts on the queue for a spot notice (the agent may hear it too)."""
        self.lost(node)
        self.queue.send_event(spot_warning(node.instance_id))

    def reclaimed(self, node: Node) -> None:
        self.lost(node)
        self.queue.send_event(state_change(node.instance_id, "shutting-down"))

    def busy(self) -> bool:
        """Replacements, launches or retirements still under way, or a return to spot
        not finished: between one retirement and the next, and until the controller
        lowers the base, nothing is in flight, yet on-demand nodes still wait to go."""
        with self._lock:
            pending = any(t.is_alive() for t in self._pending)
            if self.missing or pending or self._retiring or self.queue.depth():
                return True
        return not self.asg.spot_short() and bool(self._on_demand_nodes())

    def _launch(self, lifecycle: str, then: Node | None = None) -> Node:
        node = self.fleet.launch_node(lifecycle=lifecycle)
        self.record.launches.append(
            {"t": self.now(), "period": self.period, "node": node.name, "lifecycle": lifecycle}
        )
        log.info("launched %s as %s at %.1fs", node.name, lifecycle, self.now())

        def wait() -> None:
            try:
                self.fleet.wait_node_ready(node, timeout=self.ready_timeout_s)
            except (TimeoutError, RuntimeError) as exc:
                log.error("%s did not come up: %s", node.name, exc)
                return
            if then is not None:
                self._retire(then)

        thread = threading.Thread(target=wait, name=f"launch-{node.name}", daemon=True)
        with self._lock:
            self._pending.append(thread)
        thread.start()
        return node

    def _retire(self, node: Node) -> None:
        """Scale in an on-demand node: termination hook, the agent drains, then it goes."""
        self.fleet.scale_in(node)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline and self.fleet.node_state(node.name) is not None:
            time.sleep(0.1)
        self.fleet.terminate(node)
        self.record.retired.append({"t": self.now(), "node": node.name})
        log.info("retired on-demand %s at %.1fs (back to spot)", node.name, self.now())
        with self._lock:
            self._retiring.discard(node.name)

    def _on_demand_nodes(self) -> list[Node]:
        """On-demand nodes that serve on: not retiring, not lost (a frozen host)."""
        with self._lock:
            gone = self._retiring | self._leaving
        return [
            n for n in self.fleet.alive_nodes() if n.lifecycle == "on-demand" and n.name not in gone
        ]

    def _spot_live(self) -> int:
        with self._lock:
            leaving = self._leaving | self._retiring
        return sum(
            1
            for n in self.fleet.alive_nodes()
            if n.lifecycle != "on-demand" and n.name not in leaving
        )

    def _launched(self, node: Node) -> int:
        """One missing node filled; the number still missing."""
        with self._lock:
            self.missing -= 1
            callback = self._on_launch.pop(0) if self._on_launch else None
            missing = self.missing
        if callback:
            callback(node)
        return missing

    def _group_step(self) -> None:
        on_demand = self._on_demand_nodes()
        with self._lock:
            missing = self.missing
        # Below the base: every missing node launches on-demand now, in this period.
        while missing and len(on_demand) < self.asg.on_demand_base:
            self.asg.launched_on_demand()
            on_demand.append(self._launch("on-demand"))
            missing = self._launched(on_demand[-1])
        if not missing:
            self.missing_failed_at = None
        if time.monotonic() < self._next_attempt:
            return  # the group's retry delay after a failed spot launch
        if missing:
            if self.asg.try_spot():
                self._launched(self._launch("spot"))
            else:
                self.record.spot_failures += 1
                self._next_attempt = time.monotonic() + self.options.retry_s
                if self.missing_failed_at is None:
                    self.missing_failed_at = self.period
        elif len(on_demand) > self.asg.on_demand_base and not self._retiring:
            # Back to spot: a spot node first, then the on-demand one drains and goes.
            if self.asg.try_spot():
                victim = min(on_demand, key=lambda n: n.started_at)
                with self._lock:
                    self._retiring.add(victim.name)
                self._launch("spot", then=victim)
            else:
                self.record.spot_failures += 1
                self._next_attempt = time.monotonic() + self.options.retry_s

    # -- the controller's side ------------------------------------------------------------
    def _decide(self) -> None:
        ready = self.routers.ready_nodes()
        obs = Observation(
            self.asg.on_demand_base,
            launch_attempts(self.asg.activities),
            ready,
            desired=self.desired,
            spot_live=self._spot_live(),
        )
        decision = self.decider.decide(obs, self.state)
        self.state = decision.state
        if decision.changes:
            with self._lock:
                missing = self.missing
            self.asg.on_demand_base = decision.target_base
            self.record.decisions.append(
                {
                    "t": self.now(),
                    "period": self.period,
                    "action": str(decision.action),
                    "on_demand_base": decision.target_base,
                    "not_on_spot": obs.not_on_spot,
                    "missing": missing,  # nodes the group has not launched yet
                    "missing_failed_at": self.missing_failed_at,  # period
                    "reason": decision.reason,
                }
            )
            log.info("fallback %s at %.1fs: %s", decision.action, self.now(), decision.reason)

    def _poll_queue(self) -> None:
        for outcome in self.consumer.poll_once():
            key = str(outcome)
            self.record.queue[key] = self.record.queue.get(key, 0) + 1

    def _sample(self, force: bool = False) -> None:
        now = self.now()
        if now - self._last_sample < 1.0 and not force:
            return
        self._last_sample = now
        alive = self.fleet.alive_nodes()
        self.record.samples.append(
            {
                "t": now,
                "on_demand_base": self.asg.on_demand_base,
                "on_demand": sum(1 for n in alive if n.lifecycle == "on-demand"),
                "spot": sum(1 for n in alive if n.lifecycle != "on-demand"),
                "spot_short": self.asg.spot_short(),
            }
        )

    def _run(self) -> None:
        while not self._stop.wait(self.options.tick_s):
            self.period += 1
            for step in (self._poll_queue, self._decide, self._group_step, self._sample):
                try:
                    step()
                except Exception:  # one failed step must not end the loop (logged)
                    log.exception("capacity loop: %s failed", step.__name__)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # The run already waited for launches to settle (Demo._settling); after
        # Ctrl-C do not wait out a node's start-up: the fleet's stop ends it.
        deadline = time.monotonic() + 5
        for thread in list(self._pending):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._sample(force=True)  # the fleet as the run ends

    def report(self) -> dict[str, Any]:
        rec = self.record
        return {
            "spot_shortage": list(self.options.spot_shortage or []) or None,
            "spot_launch_failures": rec.spot_failures,
            "decisions": rec.decisions,
            "launches": rec.launches,
            "on_demand_retired": rec.retired,
            "queue": {"events": self.queue.sent, **rec.queue},
            "samples": rec.samples,
            "drained_via_queue": rec.queue.get(str(Outcome.DRAINED), 0),
        }
