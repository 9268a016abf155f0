"""The demo's chaos: when to preempt, kill or freeze which node, and what the router saw.

:func:`plan_events` spreads spot notices, hard kills and freezes over the run
with a seeded RNG, so a demo is repeatable. :class:`FleetObserver` polls the
router's ``GET /nodes`` and records each node's transitions (ready, draining,
excluded, back, gone) and a once-a-second sample of the fleet, which the report turns into
the per-event timeline and the chart.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar


class Target(Protocol):
    """What the chaos needs to know of a node."""

    name: str
    lifecycle: str


N = TypeVar("N", bound=Target)


@dataclass
class PlannedEvent:
    at_s: float  # seconds after traffic starts
    # "spot_notice", "hard_kill", "dead_agent" (agent killed, then a notice), "freeze"
    # (engine SIGSTOPped, its agent running), "host_freeze" (engine and agent stopped) or
    # "rebalance" (a recommendation to the node whose notice comes next)
    kind: str


#: the faults that close no socket: the node goes silent instead of away
FREEZES = ("freeze", "host_freeze")


def plan_events(
    duration_s: float,
    preemptions: int,
    hard_kills: int,
    rng: random.Random,
    dead_agents: int = 0,
    freezes: int = 0,
    host_freezes: int = 0,
    *,
    rebalance_lead_s: float = 0.0,
) -> list[PlannedEvent]:
    """Spread the events over the middle of the run, leaving time to recover at the end.

    Events are placed in equal slots between 15 % and 70 % of the run, with
    jitter inside each slot, so two events never land on the same instant and
    the fleet has the last 30 % to show that capacity came back.
    """
    kinds = ["spot_notice"] * preemptions + ["hard_kill"] * hard_kills
    rng.shuffle(kinds)
    # Freezes go after the others (in a shuffled order of their own), so adding them
    # leaves the notices' and kills' order for a seed as it was.
    silent = ["freeze"] * freezes + ["host_freeze"] * host_freezes
    rng.shuffle(silent)
    kinds += silent
    # A dead agent's notice goes first: the agent is killed, then the notice comes.
    kinds = ["dead_agent"] * dead_agents + kinds
    if not kinds:
        return []
    start, end = 0.15 * duration_s, 0.70 * duration_s
    slot = (end - start) / len(kinds)
    plan = [
        PlannedEvent(round(start + i * slot + rng.uniform(0.1, 0.6) * slot, 2), kind)
        for i, kind in enumerate(kinds)
    ]
    if rebalance_lead_s > 0:  # EC2 recommends rebalancing before (some) notices
        plan += [
            PlannedEvent(round(max(0.0, ev.at_s - rebalance_lead_s), 2), "rebalance")
            for ev in plan
            if ev.kind == "spot_notice"
        ]
        plan.sort(key=lambda ev: ev.at_s)
    return plan


def pick_victim(
    kind: str,
    alive: Sequence[N],
    router_view: list[dict[str, Any]],
    hit: set[str],
    rng: random.Random,
) -> N | None:
    """A node that is up, ready at the router and not already hit by an event.

    A hard kill or a freeze prefers a node with requests in flight: hitting an
    idle one (a replacement that just joined, at a low request rate) shows
    nothing. Only spot nodes are hit (spot notices exist only on spot instances).
    """
    view = {entry.get("id"): entry for entry in router_view}
    candidates = [
        n
        for n in alive
        if n.name not in hit
        and n.lifecycle == "spot"
        and view.get(n.name, {}).get("state") == "ready"
    ]
    busy = [n for n in candidates if view[n.name].get("in_flight", 0) > 0]
    if kind in ("hard_kill", *FREEZES) and busy:
        candidates = busy
    return rng.choice(candidates) if candidates else None


@dataclass
class NodeHistory:
    """First time the router showed a node in each condition (seconds since t0)."""

    first_ready: float | None = None
    excluded: float | None = None  # draining, ejected or gone after being ready
    back: float | None = None  # ready again after being excluded (a thawed freeze)
    gone: float | None = None


@dataclass
class Sample:
    t: float
    ready: int
    draining: int


def _excluded(entry: dict[str, Any]) -> bool:
    """Not routable: draining, ejected, or reported ``unhealthy`` by its agent (which
    routers treat as gone for routing)."""
    return (
        entry.get("state") != "ready"
        or entry.get("reported_state") == "unhealthy"
        or bool(entry.get("ejected"))
    )


@dataclass
class FleetObserver:
    """Polls the router's node list every ``interval_s`` in a background thread."""

    list_nodes: Callable[[], list[dict[str, Any]]]
    t0: float
    interval_s: float = 0.1
    histories: dict[str, NodeHistory] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    latest: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def counts(self) -> tuple[int, int]:
        """(ready, draining or excluded) in the latest poll."""
        ready = sum(1 for e in self.latest if not _excluded(e))
        return ready, len(self.latest) - ready

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            self.observe(self.list_nodes(), time.monotonic() - self.t0)
            now = time.monotonic() - self.t0
            if now >= next_sample:
                ready, other = self.counts()
                self.samples.append(Sample(round(now, 2), ready, other))
                next_sample = now + 1.0
            self._stop.wait(self.interval_s)

    def observe(self, nodes: list[dict[str, Any]], now: float) -> None:
        """Fold one poll of ``GET /nodes`` into the histories."""
        self.latest = nodes
        seen = set()
        for entry in nodes:
            name = str(entry.get("id"))
            seen.add(name)
            hist = self.histories.setdefault(name, NodeHistory())
            if not _excluded(entry):
                if hist.first_ready is None:
                    hist.first_ready = now
                elif hist.excluded is not None and hist.back is None:
                    hist.back = now
            elif hist.first_ready is not None and hist.excluded is None:
                hist.excluded = now
        for name, hist in self.histories.items():
            if name not in seen and hist.first_ready is not None and hist.gone is None:
                hist.gone = now
                if hist.excluded is None:
                    hist.excluded = now
