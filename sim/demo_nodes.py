"""The demo's node events: hit a node as planned, reclaim or thaw it on time, replace it.

The fleet plays EC2 and the Auto Scaling group here: a spot notice is
followed by the reclaim at the notice's time, a hard kill takes the node at
once, a frozen engine is continued after ``freeze_s``, a frozen host is
terminated then, and every lost node gets a replacement (from the simulated
group of :mod:`.capacity` when the run has one). Each event keeps an
:class:`EventRecord` that the report's timeline is filled into.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from .capacity import CapacityLoop
from .chaos import FREEZES, FleetObserver, PlannedEvent, pick_victim
from .fleet import LocalFleet, Node

log = logging.getLogger("spotrelay.demo")


@dataclass
class EventRecord:
    """One injected event and what followed it, in seconds since traffic started."""

    type: str
    node: str
    at: float
    killed: float | None = None
    replacement: str | None = None
    excluded: float | None = None
    drained: float | None = None
    expired: float | None = None  # a hard kill or host freeze: gone from the router, undrained
    replacement_ready: float | None = None
    thawed: float | None = None  # a freeze: when the engine was continued
    back: float | None = None  # a freeze: when the router showed the node ready again
    kill_due: float | None = field(default=None, repr=False)
    thaw_due: float | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The report's view: what happened, not what was still due."""
        return {k: v for k, v in asdict(self).items() if k not in ("kill_due", "thaw_due")}


class NodeChaos:
    """The node events of one run and the replacements they call for."""

    def __init__(
        self, fleet: LocalFleet, rng: random.Random, lead_s: float, freeze_s: float
    ) -> None:
        self.fleet = fleet
        self.rng = rng
        self.lead_s = lead_s
        self.freeze_s = freeze_s
        self.events: list[EventRecord] = []
        self.warned: list[str] = []  # nodes sent a rebalance recommendation, in order
        self.t0 = 0.0
        self.capacity: CapacityLoop | None = None
        self._replacing: list[threading.Thread] = []

    def begin(self, t0: float, capacity: CapacityLoop | None) -> None:
        """Traffic starts at ``t0``; ``capacity`` (if any) replaces lost nodes."""
        self.t0 = t0
        self.capacity = capacity

    def _since_t0(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    # -- injection ------------------------------------------------------------
    def inject(self, planned: PlannedEvent, now: float) -> None:
        if planned.kind == "rebalance":
            self._recommend_rebalance(now)
            return
        node = self._warned_victim(planned.kind) or self._victim(planned.kind)
        if node is None:
            log.warning("no ready node to hit at %.1fs; skipping a %s", now, planned.kind)
            return
        ev = EventRecord(planned.kind, node.name, round(now, 2))
        self.events.append(ev)
        if planned.kind == "dead_agent":
            self.fleet.kill_agent(node)  # first the agent dies; then the notice comes
            log.info("killed the agent of %s at %.1fs", node.name, now)
        if planned.kind in FREEZES:
            self._freeze(ev, node, now)
            return
        if planned.kind in ("spot_notice", "dead_agent"):
            due = self.fleet.spot_notice(node, self.lead_s)
            if self.capacity:  # EventBridge hears it too, whether the agent does or not
                self.capacity.notice(node)
            ev.kill_due = round(due - self.t0, 2)
            log.info("spot notice to %s at %.1fs (reclaimed at %.1fs)", node.name, now, ev.kill_due)
        else:
            log.info("hard kill of %s at %.1fs", node.name, now)
            self.fleet.terminate(node)
            ev.killed = self._since_t0()
            if self.capacity:  # EC2's state change reaches the queue, no notice before it
                self.capacity.reclaimed(node)
        self._replace(ev)

    def _victim(self, kind: str, spare: Collection[str] = ()) -> Node | None:
        """A node no event has hit (nor in ``spare``); see :func:`.chaos.pick_victim`."""
        hit = {e.node for e in self.events} | set(spare)
        alive, view = self.fleet.alive_nodes(), self.fleet.router_nodes()
        return pick_victim(kind, alive, view, hit, self.rng)

    def _recommend_rebalance(self, now: float) -> None:
        """A rebalance recommendation to a node no event has hit or warned yet; the next
        spot notice goes to it."""
        node = self._victim("spot_notice", spare=set(self.warned))
        if node is None:
            return
        self.fleet.rebalance(node)
        self.warned.append(node.name)
        log.info("rebalance recommendation to %s at %.1fs", node.name, now)

    def _warned_victim(self, kind: str) -> Node | None:
        """A spot notice goes to the node warned first, if it is still up."""
        if kind != "spot_notice":
            return None

        hit = {e.node for e in self.events}
        alive = {n.name: n for n in self.fleet.alive_nodes()}
        for name in self.warned:
            if name in alive and name not in hit:
                return alive[name]
        return None

    def _freeze(self, ev: EventRecord, node: Node, now: float) -> None:
        """Stop the engine (a hung GPU), or the whole host, for ``freeze_s``.

        A frozen engine is continued afterwards and its node should serve
        again; a frozen host is terminated then (its instance failed its
        status checks) and replaced at once, as the Auto Scaling group would.
        """
        host = ev.type == "host_freeze"
        self.fleet.freeze(node, host=host)
        due = round(now + self.freeze_s, 2)
        log.info("%s of %s at %.1fs (until %.1fs)", ev.type.replace("_", " "), node.name, now, due)
        if host:
            ev.kill_due = due
            if self.capacity:  # failed status checks: the group replaces it now
                self.capacity.lost(node)
            self._replace(ev)
        else:
            ev.thaw_due = due

    # -- what falls due -------------------------------------------------------
    def settle_due(self, now: float) -> None:
        """Reclaim the nodes whose notice time came, thaw the freezes that are over."""
        for ev in self.events:
            if ev.kill_due is not None and ev.killed is None and now >= ev.kill_due:
                self._reclaim(ev, now)
            if ev.thaw_due is not None and ev.thawed is None and now >= ev.thaw_due:
                self.fleet.thaw(self.fleet.nodes[ev.node])
                ev.thawed = self._since_t0()
                log.info("thawed %s at %.1fs", ev.node, now)

    def pending(self) -> bool:
        """A reclaim or a thaw is still to come (the run waits for it)."""
        return any(
            (e.kill_due is not None and e.killed is None)
            or (e.thaw_due is not None and e.thawed is None)
            for e in self.events
        )

    def _reclaim(self, ev: EventRecord, now: float) -> None:
        node = self.fleet.nodes[ev.node]
        log.info("reclaiming %s at %.1fs", node.name, now)
        self.fleet.terminate(node)
        ev.killed = self._since_t0()
        if self.capacity:
            self.capacity.reclaimed(node)

    def _replace(self, ev: EventRecord) -> None:
        """Launch a replacement in the background, as the Auto Scaling group would."""
        if self.capacity:  # the simulated group decides spot or on-demand, and when
            self.capacity.request_replacement(lambda node: setattr(ev, "replacement", node.name))
            return

        def launch() -> None:
            node = self.fleet.launch_node()
            ev.replacement = node.name
            try:
                self.fleet.wait_node_ready(node)
            except (TimeoutError, RuntimeError) as exc:
                log.error("replacement %s did not come up: %s", node.name, exc)

        thread = threading.Thread(target=launch, name=f"replace-{ev.node}", daemon=True)
        self._replacing.append(thread)
        thread.start()

    def join_replacements(self, timeout_s: float) -> None:
        for thread in self._replacing:
            thread.join(timeout=timeout_s)

    # -- the timeline ---------------------------------------------------------
    def fill_timeline(self, observer: FleetObserver) -> None:
        """Copy what the routers showed of each event's node into its record."""
        for ev in self.events:
            hist = observer.histories.get(ev.node)
            if hist:
                ev.excluded = _round(hist.excluded)
                noticed = ev.type in ("spot_notice", "dead_agent")
                ev.drained = _round(hist.gone) if noticed else None
                if ev.type in ("hard_kill", "host_freeze"):
                    ev.expired = _round(hist.gone)
                if ev.type == "freeze":
                    ev.back = _round(hist.back)
            if ev.replacement and ev.replacement in observer.histories:
                ev.replacement_ready = _round(observer.histories[ev.replacement].first_ready)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
