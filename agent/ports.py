"""The outside world as the drain, the readiness watch and self-healing see it.

Small structural types (:class:`typing.Protocol`): the real collaborators
(:class:`~.routers.RouterClient`, :class:`~.engine.EngineProbe`,
:class:`~.lifecycle.LifecycleHook`, :class:`~.webhook.Webhook`,
:class:`~.drainer.Drainer`) fit them without naming them, and a unit test's
in-process stand-in fits them too.
"""

from __future__ import annotations

from typing import Any, Protocol

from spotrelay.core.protocol import NodeLoad, NodeReport

from .drainstate import DrainRequest


class RouterPort(Protocol):
    """The control-plane calls the drain makes on one router."""

    base: str

    def put(self, report: NodeReport) -> None: ...

    def drain(self) -> int:
        """Mark the node draining; the router's count of requests in flight to it."""
        ...

    def delete(self) -> None: ...


class LoadProbe(Protocol):
    """The engine's queue (``running``, ``waiting``); None when it has no metrics."""

    def load(self) -> NodeLoad | None: ...


class LifecycleAction(Protocol):
    """The termination hook's action for this instance."""

    def complete(self) -> str: ...

    def heartbeat(self) -> bool: ...


class Notifier(Protocol):
    """The webhook: best effort, never blocks."""

    def send(self, kind: str, **fields: Any) -> None: ...


class DrainControl(Protocol):
    """What self-healing and the readiness watch need of the drain."""

    @property
    def active(self) -> bool: ...

    def submit(self, req: DrainRequest) -> bool:
        """Start a drain or merge into the one that exists; True if this started one."""
        ...

    def wait(self, timeout: float | None = None) -> bool: ...
