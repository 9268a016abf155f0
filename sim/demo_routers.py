"""The demo's router fleet: several routers sharing a registry in Redis, one restarted mid-run.

A router crash loses what that process held in memory. With the shared
registry the restarted router must come back already knowing the fleet (from
Redis, not from heartbeats), and clients must not notice: as a load
balancer would, the traffic driver stops sending new requests to the
router, lets its open ones finish (a target's deregistration delay), then
the router is SIGKILLed, started again on the same port and put back in
rotation. The run goes on until the restarted router has answered
:data:`SERVED_AFTER_BACK` requests (bounded): a restart is only shown to work
once the new process serves, however long it took on a loaded machine. The
report records each step, how many nodes the new process knew when it first
answered and how many requests it answered after, and the spread of the
requests over the routers while all of them were in rotation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from spotrelay.core.control_client import ControlClient, ControlError

from .fleet import LocalFleet
from .traffic import TrafficDriver

log = logging.getLogger("spotrelay.demo")

RESUMED_OUTCOMES = {"ok", "resumed", "success", "succeeded"}
SERVED_AFTER_BACK = 5  # requests a restarted router answers before the run may end
AFTER_BACK_WAIT_S = 30.0  # at most this long after it is back (a broken router never does)


@dataclass
class RouterRestart:
    """Seconds since traffic started."""

    router: str
    out_of_rotation: float
    killed: float | None = None
    back: float | None = None
    nodes_known_at_restart: int | None = None  # ready nodes in its first GET /nodes
    served_after_back: int = 0  # requests it answered that were sent after it was back


class RouterChaos:
    """Restarts routers during the run and sums their counters across restarts."""

    def __init__(self, fleet: LocalFleet, t0: float, drain_timeout_s: float = 60.0) -> None:
        self.fleet = fleet
        self.t0 = t0
        self.drain_timeout_s = drain_timeout_s
        self.restarts: list[RouterRestart] = []
        self._carried: dict[str, float] = {}  # counters of processes since killed
        self._threads: list[threading.Thread] = []

    def restart_later(self, index: int, traffic: TrafficDriver) -> None:
        name = list(self.fleet.routers)[index]
        thread = threading.Thread(
            target=self._restart, args=(index, name, traffic), name=f"restart-{name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=self.drain_timeout_s + 60)

    def pending(self, traffic: TrafficDriver) -> bool:
        """A restart is under way, or its router has not yet answered
        :data:`SERVED_AFTER_BACK` requests since it was back (for at most
        :data:`AFTER_BACK_WAIT_S`)."""
        if any(t.is_alive() for t in self._threads):
            return True
        self._count_served(traffic)
        now = self._now()
        return any(
            r.back is not None
            and r.served_after_back < SERVED_AFTER_BACK
            and now < r.back + AFTER_BACK_WAIT_S
            for r in self.restarts
        )

    def _count_served(self, traffic: TrafficDriver) -> None:
        index = {name: i for i, name in enumerate(self.fleet.routers)}
        with traffic.log.lock:
            records = list(traffic.log.records)
        for r in self.restarts:
            if r.back is not None:
                r.served_after_back = sum(
                    1
                    for rec in records
                    if rec.ok and rec.router == index[r.router] and rec.started >= r.back
                )

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def _restart(self, index: int, name: str, traffic: TrafficDriver) -> None:
        url = self.fleet.routers[name][0]
        control = self.fleet.control_url(name)
        record = RouterRestart(name, self._now())
        self.restarts.append(record)
        traffic.rotation.remove(index)
        deadline = time.monotonic() + self.drain_timeout_s
        while traffic.rotation.in_flight(index) and time.monotonic() < deadline:
            time.sleep(0.05)
        for key, value in counters(control).items():
            self._carried[key] = self._carried.get(key, 0.0) + value
        self.fleet.kill_router(name)
        record.killed = self._now()
        log.info("router %s SIGKILLed at %.1fs; restarting", name, record.killed)
        self.fleet.start_router(name, port=int(url.rsplit(":", 1)[1]))
        nodes = self._shared_view(control)
        record.nodes_known_at_restart = sum(1 for n in nodes if n.get("state") == "ready")
        record.back = self._now()
        traffic.rotation.add(index)
        log.info(
            "router %s back at %.1fs knowing %d ready nodes",
            name,
            record.back,
            record.nodes_known_at_restart,
        )

    def _shared_view(self, url: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """The router's first view after it read the registry from Redis."""
        deadline = time.monotonic() + timeout_s
        client = self.fleet.control(url)
        while time.monotonic() < deadline:
            try:
                view = client.nodes()
            except ControlError:
                view = None
            if view is not None and view.registry == "redis":
                return view.nodes.to_json()
            time.sleep(0.02)
        return []

    def totals(self) -> dict[str, float]:
        """Every router's counters now, plus those of the processes killed earlier."""
        out = dict(self._carried)
        for url in self.fleet.control_urls:
            for key, value in counters(url).items():
                out[key] = out.get(key, 0.0) + value
        return out

    def report(self, traffic: TrafficDriver) -> dict[str, Any]:
        self._count_served(traffic)
        per_router = [0] * len(self.fleet.routers)
        spread = [0] * len(self.fleet.routers)  # sent while every router was in rotation
        for rec in traffic.log.records:
            per_router[rec.router] += 1
            if not any(self._out_at(r, rec.started) for r in self.restarts):
                spread[rec.router] += 1
        return {
            "count": len(self.fleet.routers),
            "requests": dict(zip(self.fleet.routers, per_router, strict=True)),
            "requests_all_in_rotation": dict(zip(self.fleet.routers, spread, strict=True)),
            "restarts": [asdict(r) for r in self.restarts],
        }

    @staticmethod
    def _out_at(restart: RouterRestart, t: float) -> bool:
        """Whether the restarted router was out of rotation at ``t``."""
        back = restart.back if restart.back is not None else float("inf")
        return restart.out_of_rotation <= t < back


def counters(router_url: str) -> dict[str, float]:
    """Retries and resumed streams, from one router's Prometheus metrics."""
    try:
        text = ControlClient(router_url, None, timeout_s=5).metrics()
    except ControlError:
        return {}
    out = {"retried": 0.0, "resumed": 0.0, "resume_failed": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if family.name == "spotrelay_router_retries":
                out["retried"] += sample.value
            elif "resume" in family.name and family.name.endswith("resumes"):
                outcome = sample.labels.get("outcome", "ok")
                key = "resumed" if outcome in RESUMED_OUTCOMES else "resume_failed"
                out[key] += sample.value
    return out
