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

:class:`Demo` runs the phases (fleet up, traffic, the chaos loop, the report);
what happens to the nodes is :mod:`spotrelay.sim.demo_nodes`.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spotrelay.core.protocol import CAP_CONTINUE_FINAL_MESSAGE

from .capacity import CapacityLoop, CapacityOptions
from .chaos import FleetObserver, PlannedEvent, plan_events
from .demo_nodes import NodeChaos
from .demo_prometheus import DemoPrometheus
from .demo_routers import RouterChaos
from .demo_settings import Run
from .fleet import FleetOptions, LocalFleet
from .report import render_table, summarise, write_chart, write_json
from .traffic import TrafficDriver, TrafficOptions

log = logging.getLogger("spotrelay.demo")

ROUTER_RESTART_AT = 0.8  # of the run: after the node events, before the end


@dataclass
class DemoOptions:
    """One run: the ``demo`` section as configured, and what the CLI resolved from it."""

    cfg: Run
    fleet: FleetOptions = field(default_factory=FleetOptions)
    rps: float = 20.0  # Run.load_for: cfg.rps, or a default for the engine
    max_tokens: int = 48
    spot_shortage: tuple[float, float] | None = None  # no spot launches in this window
    progress: bool = True

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


class Demo:
    """Owns the fleet, the traffic and the chaos for one run."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.out = options.out
        self.rng = random.Random(options.cfg.seed)
        self.fleet = LocalFleet(self.out, options.fleet)
        self.nodes = NodeChaos(self.fleet, self.rng, options.cfg.lead_s, options.cfg.freeze_s)
        self.t0 = 0.0
        self.routers = RouterChaos(self.fleet, 0.0)
        self.chat_streams = True
        self.capacity: CapacityLoop | None = None
        routing = options.fleet.router_overrides.setdefault("routing", {})
        routing.setdefault("risk_aware", options.cfg.risk_placement)
        routing.setdefault("long_request_tokens", options.cfg.long_max_tokens)
        self.prometheus: DemoPrometheus | None = None
        options.fleet.agent_metrics = options.fleet.agent_metrics or options.cfg.prometheus

    # -- the run --------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start the fleet, drive traffic through the planned events, report what clients saw."""
        opts = self.options
        self._start_fleet()
        metrics_before = self.routers.totals()
        self.t0 = self.routers.t0 = time.monotonic()
        t0_wall = time.time()
        observer = FleetObserver(self.fleet.router_nodes, self.t0)
        observer.start()
        traffic = self._traffic()
        traffic.start(self.t0)
        plan = plan_events(
            opts.cfg.duration_s,
            opts.cfg.preemptions,
            opts.cfg.hard_kills,
            self.rng,
            opts.cfg.dead_agents,
            opts.cfg.freezes,
            opts.cfg.host_freezes,
            rebalance_lead_s=opts.cfg.rebalance_lead_s,
        )
        self._start_capacity()
        self.nodes.begin(self.t0, self.capacity)
        try:
            self._chaos_loop(plan, traffic, observer)
        finally:
            self.routers.join()
            traffic.stop()
            if self.capacity:
                self.capacity.stop()
            self.nodes.join_replacements(opts.fleet.engine_ready_timeout_s)
            observer.stop()
        counters = {k: v - metrics_before.get(k, 0.0) for k, v in self.routers.totals().items()}
        return self._report(traffic, observer, counters, t0_wall)

    def _start_fleet(self) -> None:
        """Routers (and Prometheus), then the nodes; returns once every node is ready."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._start_routers()
        if self.options.cfg.prometheus:
            self.prometheus = DemoPrometheus.start(self.fleet, self.out)
        nodes = [self.fleet.launch_node() for _ in range(self.options.cfg.nodes)]
        for node in nodes:
            self.fleet.wait_node_ready(node)
        log.info("fleet ready: routers %s, %d nodes", self.fleet.router_urls, len(nodes))

    def _traffic(self) -> TrafficDriver:
        opts = self.options
        return TrafficDriver(
            self.fleet.router_urls,
            opts.fleet.model,
            TrafficOptions(
                rps=opts.rps,
                stream_ratio=opts.cfg.stream_ratio,
                max_tokens=opts.max_tokens,
                verify_text=opts.fleet.engine_cmd is None,
                chat_streams=self._fleet_resumes_chat(),
                # A real engine may not serve the Responses API (llama.cpp's
                # server does not): only the simulator's fleet gets that share.
                responses_ratio=0.2 if opts.fleet.engine_cmd is None else 0.0,
                long_ratio=opts.cfg.long_ratio,
                long_max_tokens=opts.cfg.long_max_tokens,
            ),
            seed=opts.cfg.seed,
        )

    def _start_capacity(self) -> None:
        """The simulated Auto Scaling group, when the run has a spot shortage or dead agents."""
        opts = self.options
        if opts.spot_shortage or opts.cfg.dead_agents:
            self.capacity = CapacityLoop(
                self.fleet,
                CapacityOptions(spot_shortage=opts.spot_shortage),
                self.t0,
                opts.fleet.engine_ready_timeout_s,
            )
            self.capacity.start()

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
        restart_at = ROUTER_RESTART_AT * opts.cfg.duration_s if opts.cfg.routers > 1 else None
        while True:
            now = time.monotonic() - self.t0
            if (
                now >= opts.cfg.duration_s
                and not self.nodes.pending()
                and not self._settling(now)
                and not self.routers.pending(traffic)
            ):
                return
            while pending and pending[0].at_s <= now:
                self.nodes.inject(pending.pop(0), now)
            if restart_at is not None and now >= restart_at:
                restart_at = None
                self.routers.restart_later(opts.cfg.routers - 1, traffic)
            self.nodes.settle_due(now)
            if now - last_progress >= (0.5 if opts.progress else 5.0):
                self._progress(now, traffic, observer)
                last_progress = now
            time.sleep(0.05)

    def _settling(self, now: float) -> bool:
        """The capacity loop is still replacing or retiring nodes (bounded wait)."""
        limit = self.options.cfg.duration_s + self.options.fleet.engine_ready_timeout_s
        return self.capacity is not None and now < limit and self.capacity.busy()

    # -- observation ----------------------------------------------------------
    def _progress(self, now: float, traffic: TrafficDriver, observer: FleetObserver) -> None:
        done, failed, in_flight = traffic.log.counts()
        ready, draining = observer.counts()
        line = (
            f"[{now:5.1f}/{self.options.cfg.duration_s:.0f}s] requests {done} "
            f"failed {failed} in flight {in_flight} | nodes ready {ready} "
            f"draining {draining}"
        )
        if self.options.progress and sys.stderr.isatty():
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def _report(
        self,
        traffic: TrafficDriver,
        observer: FleetObserver,
        counters: dict[str, float],
        t0_wall: float,
    ) -> dict[str, Any]:
        """The report of the run, written as ``report.json`` and ``timeline.png``."""
        if self.options.progress and sys.stderr.isatty():
            print(file=sys.stderr)  # end the progress line
        self.nodes.fill_timeline(observer)
        report = summarise(
            traffic.log.records,
            counters,
            [e.to_json() for e in self.nodes.events],
            observer.samples,
            self._settings(),
        )
        report["routers"] = self.routers.report(traffic)
        if self.capacity:
            report["capacity"] = self.capacity.report()
        if self.prometheus:
            report["alerts"] = self.prometheus.alerts(t0_wall)
        write_json(report, self.out)
        write_chart(report, traffic.log.records, self.out, self.options.cfg.duration_s)
        return report

    def _start_routers(self) -> None:
        """One router (memory registry), or several sharing a registry in Redis."""
        opts = self.options
        if opts.cfg.redis:
            url = opts.cfg.redis
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
            ["router"]
            if opts.cfg.routers == 1
            else [f"router-{i + 1}" for i in range(opts.cfg.routers)]
        )
        for name in names:
            self.fleet.start_router(name)

    def _settings(self) -> dict[str, Any]:
        opts = self.options
        return {
            "nodes": opts.cfg.nodes,
            "duration_s": opts.cfg.duration_s,
            "preemptions": opts.cfg.preemptions,
            "hard_kills": opts.cfg.hard_kills,
            "lead_s": opts.cfg.lead_s,
            "rps": opts.rps,
            "stream_ratio": opts.cfg.stream_ratio,
            "seed": opts.cfg.seed,
            "engine": opts.fleet.engine_cmd or "spotrelay sim vllm",
            "routers": opts.cfg.routers,
            "registry": "redis" if opts.cfg.redis else "memory",
            "verify_text": opts.fleet.engine_cmd is None,
            "streaming_chat": self.chat_streams,
            "spot_shortage": list(opts.spot_shortage) if opts.spot_shortage else None,
            "dead_agents": opts.cfg.dead_agents,
            "rebalance_lead_s": opts.cfg.rebalance_lead_s,
            "long_ratio": opts.cfg.long_ratio,
            "risk_placement": opts.cfg.risk_placement,
            "rebalance_recommendations": list(self.nodes.warned),
            "freezes": opts.cfg.freezes,
            "host_freezes": opts.cfg.host_freezes,
            "freeze_s": opts.cfg.freeze_s,
            "prometheus": opts.cfg.prometheus,
        }

    def close(self) -> None:
        self.fleet.stop()


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
