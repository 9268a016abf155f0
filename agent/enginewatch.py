"""The agent's view of its engine: the process, the API probe, stalls and the engine kind.

The ``engine-watch`` ticker checks the process every
``engine.check_interval_s`` and probes the API (``/health``, ``/v1/models``,
``/metrics``, host stats) every ``heartbeat.interval_s``, or at once when the
process appears or disappears. An engine that stops generating while
requests run (:mod:`.hang`) gets one canary request before it counts as
stalled. After each probe ``on_probe`` lets the agent work out the node's
state (the watch knows the engine, not the drain or the routers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .detect import EngineDetector
from .engine import EngineProbe, EngineStatus, ProcessWatch
from .hang import TokenStall
from .hoststats import HostSampler
from .metrics import AgentMetrics
from .settings import AgentConfig

log = logging.getLogger("spotrelay.agent")


class EngineWatch:
    """The latest :class:`EngineStatus` and the models the engine last served."""

    def __init__(
        self,
        cfg: AgentConfig,
        metrics: AgentMetrics,
        on_probe: Callable[[EngineStatus, bool | None, bool], None] = lambda *_: None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.on_probe = on_probe
        self.engine = EngineProbe(
            cfg.engine.url, timeout_s=cfg.engine.timeout_s, health_path=cfg.engine.health_path
        )
        self.detector = EngineDetector(
            self.engine, kind=cfg.engine.kind, capabilities=cfg.engine.capabilities
        )
        self.process = ProcessWatch(cfg.engine.process_name, self.engine.port)
        self.host = HostSampler()
        self.stall = TokenStall(cfg.engine.stall_after_s)
        self.status: EngineStatus | None = None
        self.models: list[str] = []
        self._last_alive: bool | None = None
        self._next_probe = 0.0

    def ready(self) -> bool:
        """The last probe found the engine healthy and serving the model."""
        return self.status is not None and self.status.ready(self.cfg.engine.model)

    def healthy(self) -> bool:
        return self.status is not None and self.status.healthy

    def first_probe(self) -> None:
        """Probe once before the threads start, so the first heartbeat knows the engine."""
        alive = self.process.alive()
        self.refresh(alive)
        self._last_alive = alive
        self._next_probe = time.monotonic() + self.cfg.heartbeat.interval_s

    def tick(self) -> None:
        """Watch the engine process; probe its API when it changes, else once per heartbeat."""
        alive = self.process.alive()
        self.metrics.engine_process.set(-1 if alive is None else int(alive))
        now = time.monotonic()
        if alive != self._last_alive or now >= self._next_probe:
            self.refresh(alive)
            self._next_probe = now + self.cfg.heartbeat.interval_s
        self._last_alive = alive

    def refresh(self, alive: bool | None) -> None:
        status = self.engine.probe()
        status.process_alive = alive
        status.stalled = self._stalled(status)
        self.detector.observe(status.healthy)
        served = status.serves(self.cfg.engine.model)
        if served:
            self.models = served
        self.status = status
        ready = status.ready(self.cfg.engine.model)
        self.metrics.engine_ready.set(1 if ready else 0)
        try:
            self.metrics.observe_host(self.host.sample())
        except Exception as exc:  # host stats are a nice-to-have
            log.debug("host stats failed: %s", exc)
        self.on_probe(status, alive, ready)

    def _stalled(self, status: EngineStatus) -> bool:
        running = status.load.running if status.load is not None else None
        stalled = status.healthy and self.stall.observe(time.monotonic(), running, status.generated)
        if stalled and self.stall.needs_canary(running):
            model = self.cfg.engine.model or (status.models[0] if status.models else None)
            if model and self.engine.canary(model):
                log.info("the stalled engine answered a one-token request: generating again")
                self.stall.recovered()
                return False
        return stalled

    def why(self, status: EngineStatus, alive: bool | None, ready: bool) -> str:
        """The log line's reason for the node's state after a probe."""
        if alive is False:
            return "engine process gone"
        if ready:
            return "engine ready"
        if status.stalled:
            running = status.load.running if status.load else 0
            return (
                f"engine hung: {running} requests running and no token generated for "
                f"{self.stall.stalled_for(time.monotonic()):.1f}s"
            )
        if not status.healthy:
            return f"engine unhealthy ({status.error or 'no answer'})"
        return "engine does not list the model"

    @staticmethod
    def unhealthy_reason(status: EngineStatus, alive: bool | None) -> str:
        """The label of ``spotrelay_agent_engine_unhealthy_total``."""
        if alive is False:
            return "process_gone"
        if status.stalled:
            return "stalled"
        if not status.healthy:
            return "no_answer" if status.error and status.error.startswith("GET") else "error"
        return "no_model"
