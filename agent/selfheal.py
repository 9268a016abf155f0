"""Self-healing: an engine that keeps failing gets its instance replaced by the ASG.

EC2 health checks only see the instance; a node whose vLLM crash-loops stays
``Healthy`` forever and serves nothing. After the launch phase (the launch
hook completed, or the engine served once when there is no hook), an engine
that has not been ready for ``engine.unhealthy_after_s`` makes the agent

1. drain what it can (routers stop sending work, in-flight requests finish,
   the node deregisters), bounded by ``drain.timeout_s``, then
2. call ``SetInstanceHealth(Unhealthy)`` for its own instance — the IAM
   policy lets it name only its own group — so the ASG terminates and
   replaces it (the termination hook then runs the usual drain steps).

Both steps are logged and counted (``spotrelay_agent_self_heal_total``).
:class:`SelfHeal` decides without I/O; :class:`Healer` acts once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from spotrelay.core.backoff import Backoff

from .drainstate import DrainRequest
from .lifecycle import LifecycleError, LifecycleHook
from .metrics import AgentMetrics
from .ports import DrainControl, Notifier

log = logging.getLogger("spotrelay.agent.selfheal")

REASON = "engine_unhealthy"


@dataclass
class SelfHeal:
    """Fires once when the engine has been failing ``unhealthy_after_s`` while armed."""

    unhealthy_after_s: float
    unhealthy_since: float | None = None
    fired: bool = False

    def step(self, now: float, *, healthy: bool, armed: bool) -> bool:
        if self.fired or not armed or self.unhealthy_after_s <= 0:
            self.unhealthy_since = None
            return False
        if healthy:
            self.unhealthy_since = None
            return False
        if self.unhealthy_since is None:
            self.unhealthy_since = now
            log.warning(
                "engine not serving; the instance is replaced if this lasts %.0fs",
                self.unhealthy_after_s,
            )
            return False
        if now - self.unhealthy_since >= self.unhealthy_after_s:
            self.fired = True
            return True
        return False


class Healer:
    """Drain (bounded), then ``SetInstanceHealth(Unhealthy)``, retried until it succeeds."""

    def __init__(
        self,
        *,
        drain: DrainControl,
        asg: LifecycleHook,
        drain_timeout_s: float,
        unhealthy_after_s: float,
        metrics: AgentMetrics | None = None,
        webhook: Notifier | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.drain = drain
        self.asg = asg
        self.drain_timeout_s = drain_timeout_s
        self.unhealthy_after_s = unhealthy_after_s
        self.metrics = metrics
        self.webhook = webhook
        self.stop = stop or threading.Event()
        self.clock = clock
        self.thread: threading.Thread | None = None

    def __call__(self) -> None:
        """Start healing in its own thread (the caller is the readiness ticker)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="self-heal", daemon=True)
            self.thread.start()

    def run(self) -> None:
        log.error(
            "engine failed its health checks for %.0fs after the launch phase: draining, "
            "then marking instance %s Unhealthy in %s",
            self.unhealthy_after_s,
            self.asg.instance_id,
            self.asg.asg_name,
        )
        if self.metrics is not None:
            self.metrics.self_heal.labels("triggered").inc()
        if self.webhook is not None:
            self.webhook.send("self_heal", reason=REASON, unhealthy_after_s=self.unhealthy_after_s)
        self._drain()
        backoff = Backoff(1.0, 60.0)
        while not self.stop.is_set():
            try:
                self.asg.set_unhealthy()
            except LifecycleError as exc:
                delay = backoff.next_delay()
                log.error("could not mark the instance Unhealthy (retry in %.0fs): %s", delay, exc)
                if self.metrics is not None:
                    self.metrics.self_heal.labels("failed").inc()
                self.stop.wait(delay)
                continue
            log.warning("instance marked Unhealthy: the Auto Scaling group replaces it")
            if self.metrics is not None:
                self.metrics.self_heal.labels("set_unhealthy").inc()
            return

    def _drain(self) -> None:
        now = self.clock()
        self.drain.submit(
            DrainRequest(
                REASON,
                REASON,
                drain_until=now + self.drain_timeout_s,
                deadline=now + self.drain_timeout_s + 5.0,
                terminating=False,
            )
        )
        if not self.drain.wait(self.drain_timeout_s + 10.0):
            log.warning("drain still running after %.0fs; marking Unhealthy anyway",
                        self.drain_timeout_s)  # fmt: skip
