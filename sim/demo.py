"""``spotrelay demo``: a local spot fleet under injected preemptions, end to end.

The run: start a router and N nodes on loopback, wait until all are ready,
drive OpenAI traffic for ``duration_s``, inject spot notices (the node is
reclaimed when the notice's time arrives, as EC2 would), hard kills (no
notice) and freezes (no socket closes: the engine SIGSTOPped for
``freeze_s``, then continued; or the whole host, engine and agent, stopped
and terminated after ``freeze_s``), launch a replacement for every lost node
(as the Auto Scaling group would), then report what the clients saw. Exit
status 0 means no client saw a failure, so the demo doubles as an end-to-end
smoke test.

With ``routers`` > 1 the routers share their registry in Redis (``redis``: a
URL, or ``auto`` to start a local ``redis-server``), the traffic is spread
over them, and one router is SIGKILLed and restarted late in the run
(:mod:`spotrelay.sim.demo_routers`).
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE

from .capacity import CapacityLoop, CapacityOptions
from .chaos import FREEZES, FleetObserver, PlannedEvent, pick_victim, plan_events
from .demo_prometheus import DemoPrometheus
from .demo_routers import RouterChaos
from .fleet import FleetOptions, LocalFleet, Node
from .report import render_table, summarise, write_chart, write_json
from .traffic import TrafficDriver, TrafficOptions

log = logging.getLogger("spotrelay.demo")

ROUTER_RESTART_AT = 0.8  # of the run: after the node events, before the end


@dataclass
class DemoOptions:
    nodes: int = 3
    duration_s: float = 60.0
    preemptions: int = 2
    hard_kills: int = 1
    lead_s: float = 10.0
    rps: float = 20.0
    stream_ratio: float = 0.5
    seed: int = 7
    out: Path = Path("demo-out")
    fleet: FleetOptions = field(default_factory=FleetOptions)
    max_tokens: int = 48
    progress: bool = True
    routers: int = 1
    redis: str | None = None  # a redis:// URL, or "auto": start a local redis-server
    spot_shortage: tuple[float, float] | None = None  # no spot launches in this window
    dead_agents: int = 0  # agents killed before their node's notice (heard via the queue)
    rebalance_lead_s: float = 0.0  # a rebalance recommendation this long before each notice
    long_ratio: float = 0.0  # share of streams that are long generations
    long_max_tokens: int = 300
    risk_placement: bool = True  # the router's routing.risk_aware
    freezes: int = 1  # engines SIGSTOPped for freeze_s, their agents running (a hung GPU)
    host_freezes: int = 1  # whole nodes stopped for freeze_s, then terminated and replaced
    freeze_s: float = 9.0  # longer than the demo router's registry.ttl_s (6 s): EC2 takes minutes
    prometheus: bool = False  # a real Prometheus scrapes the run; the report lists its alerts


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
    replacement_ready: float | None = None
    thawed: float | None = None  # a freeze: when the engine was continued
    back: float | None = None  # a freeze: when the router showed the node ready again
    kill_due: float | None = field(default=None, repr=False)
    thaw_due: float | None = field(default=None, repr=False)


class Demo:
    """Owns the fleet, the traffic and the chaos for one run."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.out = options.out
        self.rng = random.Random(options.seed)
        self.fleet = LocalFleet(self.out, options.fleet)
        self.events: list[EventRecord] = []
        self.t0 = 0.0
        self._replacing: list[threading.Thread] = []
        self.routers = RouterChaos(self.fleet, 0.0)
        self.chat_streams = True
        self.capacity: CapacityLoop | None = None
        self.warned: list[str] = []  # nodes sent a rebalance recommendation, in order
        routing = options.fleet.router_overrides.setdefault("routing", {})
        routing.setdefault("risk_aware", options.risk_placement)
        routing.setdefault("long_request_tokens", options.long_max_tokens)
        self.prometheus: DemoPrometheus | None = None
        options.fleet.agent_metrics = options.fleet.agent_metrics or options.prometheus

    # -- the run --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts = self.options
        self.out.mkdir(parents=True, exist_ok=True)
        self._start_routers()
        if opts.prometheus:
            self.prometheus = DemoPrometheus.start(self.fleet, self.out)
        nodes = [self.fleet.launch_node() for _ in range(opts.nodes)]
        for node in nodes:
            self.fleet.wait_node_ready(node)
        log.info("fleet ready: routers %s, %d nodes", self.fleet.router_urls, len(nodes))
        metrics_before = self.routers.totals()
        self.t0 = self.routers.t0 = time.monotonic()
        t0_wall = time.time()
        observer = FleetObserver(self.fleet.router_nodes, self.t0)
        observer.start()
        traffic = TrafficDriver(
            self.fleet.router_urls,
            opts.fleet.model,
            TrafficOptions(
                rps=opts.rps,
                stream_ratio=opts.stream_ratio,
                max_tokens=opts.max_tokens,
                verify_text=opts.fleet.engine_cmd is None,
                chat_streams=self._fleet_resumes_chat(),
                # A real engine may not serve the Responses API (llama.cpp's
                # server does not): only the simulator's fleet gets that share.
                responses_ratio=0.2 if opts.fleet.engine_cmd is None else 0.0,
                long_ratio=opts.long_ratio,
                long_max_tokens=opts.long_max_tokens,
            ),
            seed=opts.seed,
        )
        traffic.start(self.t0)
        plan = plan_events(
            opts.duration_s,
            opts.preemptions,
            opts.hard_kills,
            self.rng,
            opts.dead_agents,
            opts.freezes,
            opts.host_freezes,
            rebalance_lead_s=opts.rebalance_lead_s,
        )
        if opts.spot_shortage or opts.dead_agents:
            self.capacity = CapacityLoop(
                self.fleet,
                CapacityOptions(spot_shortage=opts.spot_shortage),
                self.t0,
                opts.fleet.engine_ready_timeout_s,
            )
            self.capacity.start()
        try:
            self._chaos_loop(plan, traffic, observer)
        finally:
            self.routers.join()
            traffic.stop()
            if self.capacity:
                self.capacity.stop()
            for thread in self._replacing:
                thread.join(timeout=opts.fleet.engine_ready_timeout_s)
            observer.stop()
        counters = {k: v - metrics_before.get(k, 0.0) for k, v in self.routers.totals().items()}
        self._fill_timeline(observer)
        report = summarise(
            traffic.log.records,
            counters,
            [
                {k: v for k, v in asdict(e).items() if k not in ("kill_due", "thaw_due")}
                for e in self.events
            ],
            observer.samples,
            self._settings(),
        )
        report["routers"] = self.routers.report(traffic)
        if self.capacity:
            report["capacity"] = self.capacity.report()
        if self.prometheus:
            report["alerts"] = self.prometheus.alerts(t0_wall)
        write_json(report, self.out)
        write_chart(report, traffic.log.records, self.out, opts.duration_s)
        return report

    def _fleet_resumes_chat(self) -> bool:
        """Whether every node advertises chat resume (its agent detected the engine)."""
        caps = [set(n.get("engine", {}).get("capabilities", [])) for n in self.fleet.router_nodes()]
        if caps and all(CAP_CONTINUE_FINAL_MESSAGE in c for c in caps):
            return True
        log.warning(
            "the engine does not advertise %s (chat resume): streaming requests go through "
            "completions, which resume on any engine",
            CAP_CONTINUE_FINAL_MESSAGE,
        )
        self.chat_streams = False
        return False

    def _chaos_loop(
        self, plan: list[PlannedEvent], traffic: TrafficDriver, observer: FleetObserver
    ) -> None:
        opts = self.options
        pending = list(plan)
        last_progress = 0.0
        restart_at = ROUTER_RESTART_AT * opts.duration_s if opts.routers > 1 else None
        while True:
            now = time.monotonic() - self.t0
            if now >= opts.duration_s and not self._kills_pending() and not self._settling(now):
                return
            while pending and pending[0].at_s <= now:
                self._inject(pending.pop(0), now)
            if restart_at is not None and now >= restart_at:
                restart_at = None
                self.routers.restart_later(opts.routers - 1, traffic)
            for ev in self.events:
                if ev.kill_due is not None and ev.killed is None and now >= ev.kill_due:
                    self._reclaim(ev, now)
                if ev.thaw_due is not None and ev.thawed is None and now >= ev.thaw_due:
                    self.fleet.thaw(self.fleet.nodes[ev.node])
                    ev.thawed = round(time.monotonic() - self.t0, 2)
                    log.info("thawed %s at %.1fs", ev.node, now)
            if now - last_progress >= (0.5 if opts.progress else 5.0):
                self._progress(now, traffic, observer)
                last_progress = now
            time.sleep(0.05)

    def _settling(self, now: float) -> bool:
        """The capacity loop is still replacing or retiring nodes (bounded wait)."""
        limit = self.options.duration_s + self.options.fleet.engine_ready_timeout_s
        return self.capacity is not None and now < limit and self.capacity.busy()

    def _kills_pending(self) -> bool:
        """A reclaim or a thaw is still to come (the run waits for it)."""
        return any(
            (e.kill_due is not None and e.killed is None)
            or (e.thaw_due is not None and e.thawed is None)
            for e in self.events
        )

    def _victim(self, kind: str, spare: Collection[str] = ()) -> Node | None:
        """A node no event has hit (nor in ``spare``); see :func:`.chaos.pick_victim`."""
        hit = {e.node for e in self.events} | set(spare)
        alive, view = self.fleet.alive_nodes(), self.fleet.router_nodes()
        return pick_victim(kind, alive, view, hit, self.rng)

    def _inject(self, planned: PlannedEvent, now: float) -> None:
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
            due = self.fleet.spot_notice(node, self.options.lead_s)
            if self.capacity:  # EventBridge hears it too, whether the agent does or not
                self.capacity.notice(node)
            ev.kill_due = round(due - self.t0, 2)
            log.info("spot notice to %s at %.1fs (reclaimed at %.1fs)", node.name, now, ev.kill_due)
        else:
            log.info("hard kill of %s at %.1fs", node.name, now)
            self.fleet.terminate(node)
            ev.killed = round(time.monotonic() - self.t0, 2)
            if self.capacity:  # EC2's state change reaches the queue, no notice before it
                self.capacity.reclaimed(node)
        self._replace(ev)

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
        due = round(now + self.options.freeze_s, 2)
        log.info("%s of %s at %.1fs (until %.1fs)", ev.type.replace("_", " "), node.name, now, due)
        if host:
            ev.kill_due = due
            if self.capacity:  # failed status checks: the group replaces it now
                self.capacity.lost(node)
            self._replace(ev)
        else:
            ev.thaw_due = due

    def _reclaim(self, ev: EventRecord, now: float) -> None:
        node = self.fleet.nodes[ev.node]
        log.info("reclaiming %s at %.1fs", node.name, now)
        self.fleet.terminate(node)
        ev.killed = round(time.monotonic() - self.t0, 2)
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

    # -- observation ----------------------------------------------------------
    def _progress(self, now: float, traffic: TrafficDriver, observer: FleetObserver) -> None:
        done, failed, in_flight = traffic.log.counts()
        ready, draining = observer.counts()
        line = (
            f"[{now:5.1f}/{self.options.duration_s:.0f}s] requests {done} "
            f"failed {failed} in flight {in_flight} | nodes ready {ready} "
            f"draining {draining}"
        )
        if self.options.progress and sys.stderr.isatty():
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def _fill_timeline(self, observer: FleetObserver) -> None:
        if self.options.progress and sys.stderr.isatty():
            print(file=sys.stderr)
        for ev in self.events:
            hist = observer.histories.get(ev.node)
            if hist:
                ev.excluded = _round(hist.excluded)
                noticed = ev.type in ("spot_notice", "dead_agent")
                ev.drained = _round(hist.gone) if noticed else None
                if ev.type == "freeze":
                    ev.back = _round(hist.back)
            if ev.replacement and ev.replacement in observer.histories:
                ev.replacement_ready = _round(observer.histories[ev.replacement].first_ready)

    def _start_routers(self) -> None:
        """One router (memory registry), or several sharing a registry in Redis."""
        opts = self.options
        if opts.redis:
            url = opts.redis
            if url == "auto":
                from spotrelay.core.config import ConfigError

                from .redis_local import NoRedisServer, start_local_redis

                try:
                    url = start_local_redis(self.fleet.procs, self.out / "logs").url
                except NoRedisServer as exc:
                    raise ConfigError("demo.redis", f"auto: {exc}", "auto") from None
                log.info("started a local redis-server at %s", url)
            overrides = self.fleet.options.router_overrides
            # One worker per router keeps each router's /metrics counters whole.
            overrides.setdefault("server", {}).setdefault("workers", 1)
            overrides.setdefault("registry", {}).update(
                {"backend": "redis", "redis_url": url, "ttl_s": 10}
            )
        names = (
            ["router"] if opts.routers == 1 else [f"router-{i + 1}" for i in range(opts.routers)]
        )
        for name in names:
            self.fleet.start_router(name)

    def _settings(self) -> dict[str, Any]:
        opts = self.options
        return {
            "nodes": opts.nodes,
            "duration_s": opts.duration_s,
            "preemptions": opts.preemptions,
            "hard_kills": opts.hard_kills,
            "lead_s": opts.lead_s,
            "rps": opts.rps,
            "stream_ratio": opts.stream_ratio,
            "seed": opts.seed,
            "engine": opts.fleet.engine_cmd or "spotrelay sim vllm",
            "routers": opts.routers,
            "registry": "redis" if opts.redis else "memory",
            "verify_text": opts.fleet.engine_cmd is None,
            "streaming_chat": self.chat_streams,
            "spot_shortage": list(opts.spot_shortage) if opts.spot_shortage else None,
            "dead_agents": opts.dead_agents,
            "rebalance_lead_s": opts.rebalance_lead_s,
            "long_ratio": opts.long_ratio,
            "risk_placement": opts.risk_placement,
            "rebalance_recommendations": list(self.warned),
            "freezes": opts.freezes,
            "host_freezes": opts.host_freezes,
            "freeze_s": opts.freeze_s,
            "prometheus": opts.prometheus,
        }

    def close(self) -> None:
        self.fleet.stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run(options: DemoOptions) -> int:
    """Run the demo, print the report, and return the exit status (0 = no failure)."""
    demo = Demo(options)
    # Installed explicitly: a shell may start us with SIGINT ignored, and SIGTERM
    # (systemd, CI timeouts) must clean up as Ctrl-C does.
    previous = {
        sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        report = demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the demo started", file=sys.stderr)
        return 130
    finally:
        demo.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(render_table(report))
    print(f"\nwrote {options.out / 'report.json'} and {options.out / 'timeline.png'}")
    return 0 if report["failed"] == 0 else 1


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
