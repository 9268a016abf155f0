"""What a drain is and what it asks for: its persisted state and its typed effects.

:class:`~.drain.DrainMachine` decides; it answers every call with effects
(the dataclasses below) and, for the next step, a step action. The
:class:`~.drainer.Drainer` performs them: disk, webhook, metrics, threads,
routers, AWS and systemctl. Nothing in this module does I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Literal

from spotrelay.core.interruptions import iso

STATE_VERSION = 1


class Step(StrEnum):
    """The drain's steps, in the order they run."""

    ANNOUNCE = "announce"
    WAIT_IDLE = "wait_idle"
    DEREGISTER = "deregister"
    COMPLETE_LIFECYCLE = "complete_lifecycle"
    STOP_ENGINE = "stop_engine"


@dataclass
class DrainState:
    """What survives a restart; one JSON object in ``<state_dir>/drain.json``."""

    instance_id: str
    node_id: str
    kind: str
    reasons: list[str]
    started_at: float
    drain_until: float
    deadline: float
    terminating: bool = False
    persist: bool = True
    stop_engine: bool = False
    boot_id: str | None = None
    announced: bool = False
    idle: bool = False
    deregistered: bool = False
    lifecycle_done: bool = False
    lifecycle_result: str | None = None
    engine_stopped: bool = False
    finished_at: float | None = None
    version: int = STATE_VERSION
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["deadline_iso"] = iso(self.deadline)
        doc["drain_until_iso"] = iso(self.drain_until)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DrainState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def snapshot(self) -> DrainState:
        """A copy the executor can write while the machine changes the original."""
        return replace(self, reasons=list(self.reasons), events=[dict(e) for e in self.events])

    def pending(self, has_hook: bool) -> list[Step]:
        """Steps still to run, in order."""
        steps = []
        if not self.announced:
            steps.append(Step.ANNOUNCE)
        if not self.idle:
            steps.append(Step.WAIT_IDLE)
        if not self.deregistered:
            steps.append(Step.DEREGISTER)
        if self.terminating and has_hook and not self.lifecycle_done:
            steps.append(Step.COMPLETE_LIFECYCLE)
        if self.stop_engine and not self.engine_stopped:
            steps.append(Step.STOP_ENGINE)
        return steps


@dataclass(frozen=True)
class DrainRequest:
    """One signal asking for a drain (an IMDS event, SIGTERM, self-healing)."""

    reason: str
    kind: str
    drain_until: float
    deadline: float
    terminating: bool
    persist: bool = True
    stop_engine: bool = False
    detail: dict[str, Any] | None = None


# ------------------------------------------------------------------ effects
# What the executor does between steps, in the order given.


@dataclass(frozen=True)
class WakeLinks:
    """Heartbeat links send the node's state now (``draining``, or nothing once deregistered)."""


@dataclass(frozen=True)
class Quiesce:
    """Wait out heartbeats in flight: none may land after the ``DELETE``."""


@dataclass(frozen=True)
class Persist:
    """Write ``state`` (a snapshot); a lower ``seq`` than one written already is stale."""

    state: DrainState
    seq: int


@dataclass(frozen=True)
class ClearState:
    """Remove a state file that belongs to another instance or boot."""


@dataclass(frozen=True)
class Notify:
    """One webhook document."""

    kind: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Measure:
    """One drain metric: ``drains`` (+1 for ``label`` = the first reason's kind),
    ``draining`` (set to ``value``), ``duration`` (observe ``value`` seconds),
    ``lifecycle`` (+1 for ``label`` = the lifecycle action's result), ``deadline_missed``
    (+1: the drain deadline came before the engine was idle)."""

    metric: Literal["drains", "draining", "duration", "lifecycle", "deadline_missed"]
    value: float = 1.0
    label: str = ""


@dataclass(frozen=True)
class StartWorker:
    """Run the pending steps in the drain thread (``resumed``: after a restart)."""

    resumed: bool = False


@dataclass(frozen=True)
class WakeWorker:
    """Cut the idle wait short: the deadline or the signals changed."""


Effect = WakeLinks | Quiesce | Persist | ClearState | Notify | Measure | StartWorker | WakeWorker


# ------------------------------------------------------------- step actions
# The I/O of one step; the executor reports the outcome back to the machine.


@dataclass(frozen=True)
class Announce:
    """PUT ``draining`` and ``POST /drain`` to every router until acknowledged or ``until``."""

    until: float


@dataclass(frozen=True)
class WaitIdle:
    """Poll the engine and the routers until the machine says idle or past ``drain_until``."""


@dataclass(frozen=True)
class Deregister:
    """``DELETE /nodes/{id}`` on every router, each retried until ``until``."""

    until: float


@dataclass(frozen=True)
class CompleteLifecycle:
    """``CompleteLifecycleAction`` CONTINUE, retried until ``until``."""

    until: float


@dataclass(frozen=True)
class StopEngine:
    """``systemctl stop unit`` (nothing when ``unit`` is None)."""

    unit: str | None
    timeout_s: float


StepAction = Announce | WaitIdle | Deregister | CompleteLifecycle | StopEngine


@dataclass(frozen=True)
class IdleVerdict:
    """One poll of the idle wait: stop waiting, heartbeat the hook, or sleep."""

    done: bool
    heartbeat: bool = False
    sleep_s: float = 0.0
