"""The running agent: wires IMDS monitors, the engine watch, heartbeats and the drain.

Threads (all daemons; the main thread only waits for signals and runs the
scheduled-maintenance timer):

- four IMDS pollers (:mod:`.monitors`) → :meth:`Agent.observe`, which keeps
  what is new (:class:`.eventstore.EventStore`) and acts on it as
  :class:`.policy.EventPolicy` decides;
- ``engine-watch`` (:class:`.enginewatch.EngineWatch`): the engine process
  every ``engine.check_interval_s`` and a full probe (``/health``,
  ``/v1/models``, ``/metrics``, host stats) every ``heartbeat.interval_s``, or
  at once when the process disappears; an engine that stops answering or
  generating (:mod:`.hang`) makes the node ``unhealthy`` on every router at
  once (the links are woken);
- one heartbeat link per router (:class:`.routers.RouterLink`);
- the drain worker while a drain runs: :class:`.drain.DrainMachine` decides,
  :class:`.drainer.Drainer` performs its effects;
- the ``/metrics`` server.

SIGTERM/SIGINT: a short drain (``drain.sigterm_timeout_s``) if the node is
registered, then exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from spotrelay.core.backoff import Backoff
from spotrelay.core.config import ConfigError
from spotrelay.core.interruptions import Event, Rebalance
from spotrelay.core.protocol import NodeLoad, NodeReport, NodeState, Risk, valid_instance_id
from spotrelay.core.secrets import read_token
from spotrelay.core.ticker import Every, Ticker

from .cloudwatch import load_publisher
from .drain import DrainMachine, DrainPolicy
from .drainer import Drainer
from .drainstore import STATE_FILE, StateStore, read_boot_id
from .engine import EngineStatus
from .enginewatch import EngineWatch
from .eventstore import EventStore
from .imds import Identity, ImdsClient, ImdsError
from .lifecycle import LifecycleHook
from .metrics import AgentMetrics
from .monitors import Poller, all_monitors
from .policy import Action, EventPolicy
from .readiness import NodeView, RouterAcks, build_watch
from .routers import RouterClient, RouterLink
from .settings import AgentConfig
from .webhook import Webhook

log = logging.getLogger("spotrelay.agent")


def advertise_url(cfg: AgentConfig, identity: Identity, engine_port: int) -> str:
    if cfg.node.advertise_url:
        return cfg.node.advertise_url
    if not identity.local_ipv4:
        raise ConfigError("node.advertise_url", "not set and IMDS reports no local-ipv4")
    return f"http://{identity.local_ipv4}:{engine_port}"


def state_store(cfg: AgentConfig, dry_run: bool) -> StateStore:
    """The drain state file; dry runs keep it in memory so they never leave a trace."""
    if dry_run:
        return StateStore(None)
    directory = Path(cfg.state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError("state_dir", f"cannot create: {exc.strerror}", str(directory)) from None
    probe = directory / ".write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError("state_dir", f"not writable: {exc.strerror}", str(directory)) from None
    return StateStore(directory / STATE_FILE)


def drain_policy(cfg: AgentConfig) -> DrainPolicy:
    """The drain's settings, from ``drain.*``, ``engine.*``, ``lifecycle.*`` and ``imds.*``."""
    return DrainPolicy(
        safety_margin_s=cfg.drain.safety_margin_s,
        timeout_s=cfg.drain.timeout_s,
        sigterm_timeout_s=cfg.drain.sigterm_timeout_s,
        ack_timeout_s=cfg.drain.ack_timeout_s,
        stop_engine=cfg.drain.stop_engine and bool(cfg.engine.systemd_unit),
        systemd_unit=cfg.engine.systemd_unit,
        engine_stop_timeout_s=cfg.engine.stop_timeout_s,
        lifecycle_heartbeat_s=cfg.lifecycle.heartbeat_interval_s,
        idle_poll_s=min(0.25, cfg.imds.poll_interval_s),
    )


def wait_identity(
    imds: ImdsClient, cfg: AgentConfig, terminate: threading.Event
) -> Identity | None:
    """Read the instance identity, retrying with backoff; None if told to stop first."""
    backoff = Backoff(cfg.imds.poll_interval_s, 10.0)
    attempts = 0
    while not terminate.is_set():
        try:
            return imds.identity()
        except ImdsError as exc:
            attempts += 1
            if cfg.node.id and cfg.node.advertise_url and attempts >= 3:
                log.warning("IMDS unavailable (%s); using node.id without IMDS labels", exc)
                return Identity(instance_id=cfg.node.id)
            delay = backoff.next_delay()
            log.warning("waiting for IMDS identity: %s (retry in %.1fs)", exc, delay)
            terminate.wait(delay)
    return None


def termination_hook(cfg: AgentConfig, identity: Identity, dry_run: bool) -> LifecycleHook | None:
    """The termination hook the drain completes; None when ``lifecycle.*`` names none."""
    lc = cfg.lifecycle
    if not (lc.asg_name and lc.hook_name):
        return None
    return LifecycleHook(
        lc.asg_name,
        lc.hook_name,
        identity.instance_id,
        region=lc.region or identity.region,
        endpoint_url=lc.endpoint_url,
        dry_run=dry_run,
    )


class Agent:
    """One agent process; :meth:`run` blocks until SIGTERM and returns the exit code."""

    def __init__(self, cfg: AgentConfig, *, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.dry_run = dry_run
        self.stop = threading.Event()  # threads end
        self.terminate = threading.Event()  # a signal arrived
        self.metrics = AgentMetrics()
        self.token = read_token(
            cfg.router.node_token, cfg.router.node_token_file, "router.node_token"
        )
        self.imds = ImdsClient(
            cfg.imds.url,
            timeout_s=cfg.imds.timeout_s,
            token_ttl_s=cfg.imds.token_ttl_s,
            on_error=lambda kind: self.metrics.imds_errors.labels(kind).inc(),
        )
        self.watch = EngineWatch(cfg, self.metrics, self._on_probe)
        self.registered = False
        self.acks = RouterAcks()  # which routers took the node as ready (launch gate)
        self.policy = EventPolicy.from_config(cfg.drain)
        # Known once IMDS answers (:meth:`start`):
        self.identity: Identity | None = None
        self.node_id = cfg.node.id or ""
        self.url = cfg.node.advertise_url or ""
        self.labels: dict[str, str] = dict(cfg.node.labels)
        self.webhook = Webhook(None)  # no URL: sends nothing until the node is known
        self.links: list[RouterLink] = []
        self.pollers: list[Poller] = []
        self.drain: Drainer | None = None
        self.events: EventStore | None = None
        self._last_state: NodeState | None = None
        self._threads: list[Ticker] = []

    # ------------------------------------------------------------ start-up
    def _identify(self, identity: Identity) -> None:
        """Who this node is, once IMDS has answered."""
        cfg = self.cfg
        self.identity = identity
        self.node_id = cfg.node.id or identity.instance_id
        self.url = advertise_url(cfg, identity, self.watch.engine.port)
        self.labels = {**identity.labels(), **cfg.node.labels}
        self.webhook = Webhook(
            cfg.webhook.url,
            timeout_s=cfg.webhook.timeout_s,
            dry_run=self.dry_run,
            base={"node_id": self.node_id, "instance_id": identity.instance_id, **self.labels},
            on_failure=self.metrics.webhook_failures.inc,
        )

    def _build_drain(self, identity: Identity, routers: list[RouterClient]) -> Drainer:
        cfg = self.cfg
        lifecycle = termination_hook(cfg, identity, self.dry_run)
        machine = DrainMachine(
            node_id=self.node_id,
            instance_id=identity.instance_id,
            policy=drain_policy(cfg),
            has_hook=lifecycle is not None,
            boot_id=read_boot_id(),
        )
        return Drainer(
            machine,
            routers=routers,
            engine=self.watch.engine,
            store=state_store(cfg, self.dry_run),
            report_fn=self.report,
            lifecycle=lifecycle,
            on_change=self.wake_links,
            quiesce=self.quiesce_links,
            metrics=self.metrics,
            webhook=self.webhook,
            dry_run=self.dry_run,
        )

    def start(self) -> bool:
        """Build and start everything; False if a signal arrived before IMDS answered."""
        cfg = self.cfg
        identity = wait_identity(self.imds, cfg, self.terminate)
        if identity is None:
            return False
        self._identify(identity)
        routers = [
            RouterClient(
                url, self.node_id, self.token, timeout_s=cfg.router.timeout_s, dry_run=self.dry_run
            )
            for url in cfg.router.urls
        ]
        self.links = [
            RouterLink(
                r, cfg.heartbeat.interval_s, self.current_report, self.stop, self._on_heartbeat
            )
            for r in routers
        ]
        self.drain = self._build_drain(identity, routers)
        log.info(
            "agent starting%s",
            " (dry run: no router, AWS or systemctl calls)" if self.dry_run else "",
            extra={
                "node_id": self.node_id,
                "url": self.url,
                "routers": ",".join(cfg.router.urls),
                "lifecycle_hook": cfg.lifecycle.hook_name or "-",
                **self.labels,
            },
        )
        if not self.token:
            log.warning("no node token configured (router.node_token / node_token_file)")
        self.metrics.serve(cfg.metrics.host, cfg.metrics.port)  # before any drain resumes
        self.events = EventStore(identity.instance_id)
        restored = self.drain.restore()
        for doc in restored.events if restored else []:  # acted on before the restart
            self.events.remember(str(doc.get("type")), str(doc.get("key")))
        self.watch.first_probe()
        self.pollers = [
            Poller(m, self.imds, cfg.imds.poll_interval_s, self.observe, self.stop)
            for m in all_monitors()
        ]
        engine_watch = Every(
            cfg.engine.check_interval_s, self.watch.tick, stop=self.stop, name="engine-watch"
        )
        readiness = build_watch(cfg, self._readiness_view(identity, self.drain))
        self._threads = [*self.pollers, engine_watch, *self.links, readiness]
        if cfg.cloudwatch.enabled:
            self._threads.append(load_publisher(cfg, identity, self.published_load, self.stop))
        for t in self._threads:
            t.start()
        return True

    def _readiness_view(self, identity: Identity, drain: Drainer) -> NodeView:
        """What the launch gate, the start-up clock and self-healing read of this agent."""
        return NodeView(
            instance_id=identity.instance_id,
            region=identity.region,
            engine_ready=self.watch.ready,
            engine_healthy=self.watch.healthy,
            acks=self.acks,
            drain=drain,
            metrics=self.metrics,
            webhook=self.webhook,
            stop=self.stop,
            dry_run=self.dry_run,
        )

    # -------------------------------------------------------------- state
    def published_load(self) -> NodeLoad | None:
        """The load CloudWatch gets: the last probe's, None while not serving or draining."""
        drain, status = self.drain, self.watch.status
        if (drain is not None and drain.active) or status is None or status.load is None:
            return None
        return status.load if status.ready(self.cfg.engine.model) else None

    def report(self, state: NodeState) -> NodeReport | None:
        """A report with ``state``; None while the engine's models are unknown."""
        models = self.watch.models or ([self.cfg.engine.model] if self.cfg.engine.model else [])
        if not models:
            return None
        status = self.watch.status
        load = status.load if status and status.load else NodeLoad()
        instance_id = self.identity.instance_id if self.identity else None
        return NodeReport(
            url=self.url,
            models=tuple(models),
            state=state,
            load=load,
            labels=dict(self.labels),
            engine=self.watch.detector.current(),
            instance_id=instance_id if instance_id and valid_instance_id(instance_id) else None,
            risk=self.risk(),
        )

    def risk(self) -> Risk:
        """``elevated`` while IMDS reports a rebalance recommendation for this instance."""
        events = self.events
        return Risk.ELEVATED if events is not None and events.holds(Rebalance.kind) else Risk.NONE

    def desired_state(self) -> NodeState | None:
        """What the routers should be told now; None: nothing (not registered, or gone).

        A registered node whose engine stopped serving outside a drain is
        ``unhealthy``: its open requests will not finish there, so the routers
        move them (``draining`` would let them run out).
        """
        drain = self.drain
        if drain is not None and drain.silenced:
            return None
        if drain is not None and drain.active:
            return NodeState.DRAINING
        if self.watch.ready():
            return NodeState.READY
        if self.registered:
            return NodeState.UNHEALTHY
        return None

    def current_report(self) -> NodeReport | None:
        state = self.desired_state()
        return self.report(state) if state is not None else None

    def _on_heartbeat(self, client: RouterClient, report: NodeReport, ok: bool) -> None:
        self.acks.record(client.base, report.state, ok)
        if ok:
            self.metrics.heartbeats.labels(client.base).inc()
            if report.state == NodeState.READY and not self.registered:
                self.registered = True
                log.info("registered with router %s", client.base)
        else:
            self.metrics.heartbeat_failures.labels(client.base).inc()

    def wake_links(self) -> None:
        for link in self.links:
            link.wake()

    def quiesce_links(self) -> None:
        """Wait out heartbeats in flight (called once no new one can start)."""
        for link in self.links:
            with link.lock:
                pass

    # -------------------------------------------------------------- engine
    def _on_probe(self, status: EngineStatus, alive: bool | None, ready: bool) -> None:
        """After each engine probe: tell the routers at once when the node's state changed."""
        state = self.desired_state()
        if state == self._last_state:
            return
        why = self.watch.why(status, alive, ready)
        level = logging.WARNING if state is NodeState.UNHEALTHY else logging.INFO
        log.log(level, "node state %s -> %s: %s", self._last_state, state, why)
        if state is NodeState.UNHEALTHY:
            self.metrics.engine_unhealthy.labels(self.watch.unhealthy_reason(status, alive)).inc()
        self._last_state = state
        self.wake_links()

    # -------------------------------------------------------------- events
    def observe(self, source: str, events: list[Event]) -> None:
        """A source's current events (the pollers call this on every read)."""
        assert self.events is not None
        for event in self.events.observe(source, events):
            self.on_event(event)

    def on_event(self, event: Event) -> None:
        """Act once on a new event, as the policy decides."""
        assert self.drain is not None and self.events is not None
        self.metrics.events.labels(event.kind).inc()
        decision = self.policy.decide(event, time.time())
        if decision.action is Action.CANCEL:
            dropped = decision.cancels is not None and self.events.unschedule(decision.cancels)
            log.info("%s%s", decision.why, " (planned drain dropped)" if dropped else "")
            return
        log.warning("IMDS event: %s", event.kind, extra={"key": event.key})
        self.webhook.send("event", event=event.describe())
        if isinstance(event, Rebalance):
            self.wake_links()  # the routers learn the risk now, not at the next heartbeat
        if decision.action is Action.DRAIN:
            self.drain.request_event(event)
        elif decision.action is Action.SCHEDULE:
            assert decision.at is not None
            self.events.schedule(event, decision.at)
            log.warning(decision.why)
        else:
            log.warning(decision.why)

    def _run_schedule(self) -> None:
        """Start the drains planned for events whose time has come."""
        assert self.drain is not None and self.events is not None
        for event in self.events.due():
            self.drain.request_event(event)

    # --------------------------------------------------------------- run
    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        self.terminate.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if not self.start():
            return 0
        while not self.terminate.wait(0.5):
            self._run_schedule()
        return self.shutdown()

    def shutdown(self) -> int:
        drain = self.drain
        assert drain is not None
        if not drain.silenced and (self.registered or drain.running or drain.active):
            log.info("stopping: draining for at most %.0fs", self.cfg.drain.sigterm_timeout_s)
            drain.request_shutdown()
            drain.wait(self.cfg.drain.sigterm_timeout_s + 30)
        for t in self._threads:
            t.stop()  # sets the shared stop event and cuts each loop's wait short
        for t in self._threads:
            t.join(1.0)
        self.metrics.close()
        self.webhook.flush()
        log.info("agent stopped")
        return 0
