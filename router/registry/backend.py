"""Where a worker's registry changes go after it applied them: the sync backend.

``registry.backend: memory`` is one worker's registry and nothing else
(:class:`MemoryBackend`). With ``redis``, :class:`~spotrelay.router.registry.sync.RedisSync`
writes the ops other workers must see (upserts, drains, deletes, expiries) to
Redis and applies theirs here. Ejections, restores and rebuilds stay per
worker: the backend receives them like every op and ignores them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .ops import Op, Outcome

if TYPE_CHECKING:
    from .state import Registry


class SyncBackend(Protocol):
    """What the registry needs of a backend; ``state`` is for ``X-Spotrelay-Registry``."""

    @property
    def up(self) -> bool:
        """The backend is reachable (memory always is)."""
        ...

    @property
    def holds_expiry(self) -> bool:
        """The view is not in step with the shared one: expire nothing, filter nothing as silent
        (heartbeats may be landing on other workers)."""
        ...

    @property
    def state(self) -> str: ...

    def bind(self, registry: Registry) -> None:
        """The registry this backend serves (it applies what it hears from elsewhere there)."""

    def applied(self, op: Op, outcome: Outcome) -> None:
        """``op`` was applied locally; share it if others must see it. Never blocks."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class MemoryBackend:
    """The registry is this worker's alone: nothing to share, never down."""

    up = True
    holds_expiry = False
    state = "memory"

    def bind(self, registry: Registry) -> None:
        pass

    def applied(self, op: Op, outcome: Outcome) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
