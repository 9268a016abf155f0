"""Passive health (outlier detection): a node failing real traffic is ejected for a while.

After ``health.consecutive_failures`` failures in a row a node is ejected for
``base_ejection_s`` times its number of ejections, capped at
``max_ejection_s``; ejections decay once it has stayed healthy for
``max_ejection_s``. It comes back once the ejection time has passed *and* an
active ``/health`` probe succeeds (:mod:`.health`).

Kept apart from the registry and the balancer, as Envoy keeps its outlier
detector: this class counts and times, and says when a node should go; the
registry applies the ejection (:class:`~spotrelay.router.registry.ops.Eject`)
and sets the node's ``ejected`` flag, which is all routing reads. Everything
here is per worker: each worker judges a node by its own traffic. No I/O;
time from the injected clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from spotrelay.core.control_api import Ejection, Failures

from .node import Node


@dataclass(frozen=True)
class EjectionPolicy:
    consecutive_failures: int = 3
    base_ejection_s: float = 10.0
    max_ejection_s: float = 300.0

    def duration(self, ejections: int) -> float:
        return min(self.max_ejection_s, self.base_ejection_s * max(1, ejections))


@dataclass
class OutlierRecord:
    """One node's passive-health history on this worker."""

    consecutive_failures: int = 0
    total_failures: int = 0
    ejections: int = 0
    ejected_until: float | None = None  # while ejected
    restored_at: float | None = None


class OutlierDetector:
    """Failure counts and ejection times per node; a record exists once a node has failed."""

    def __init__(self, policy: EjectionPolicy, clock: Callable[[], float]) -> None:
        self.policy = policy
        self.clock = clock
        self._records: dict[Node, OutlierRecord] = {}
        self._lock = threading.Lock()

    def of(self, node: Node) -> OutlierRecord:
        """A copy of the node's record (zeros when it never failed)."""
        with self._lock:
            return replace(self._records.get(node) or OutlierRecord())

    def success(self, node: Node) -> None:
        record = self._records.get(node)
        if record is not None and record.consecutive_failures:
            with self._lock:
                record.consecutive_failures = 0

    def failure(self, node: Node) -> bool:
        """Count a failure; True when the node has now failed enough to be ejected."""
        with self._lock:
            if node.removed:
                return False
            record = self._records.setdefault(node, OutlierRecord())
            record.consecutive_failures += 1
            record.total_failures += 1
            return not node.ejected and record.consecutive_failures >= (
                self.policy.consecutive_failures
            )

    def ejected(self, node: Node) -> None:
        """The registry ejected the node: time the ejection (longer for each one, but a node
        healthy for ``max_ejection_s`` since its last restore starts from scratch)."""
        now = self.clock()
        with self._lock:
            record = self._records.setdefault(node, OutlierRecord())
            if record.restored_at is not None and now - record.restored_at >= (
                self.policy.max_ejection_s
            ):
                record.ejections = 0
            record.ejections += 1
            record.ejected_until = now + self.policy.duration(record.ejections)

    def restored(self, node: Node) -> None:
        with self._lock:
            record = self._records.setdefault(node, OutlierRecord())
            record.ejected_until = None
            record.consecutive_failures = 0
            record.restored_at = self.clock()

    def due_for_probe(self) -> list[Node]:
        """Ejected nodes whose ejection time is over: probe them, then restore."""
        now = self.clock()
        with self._lock:
            return [
                node
                for node, record in self._records.items()
                if record.ejected_until is not None and record.ejected_until <= now
            ]

    def forget(self, node: Node) -> None:
        """The node left the registry (a node registering again under its id starts afresh)."""
        with self._lock:
            self._records.pop(node, None)

    def report(self, node: Node, now: float) -> tuple[Failures, Ejection]:
        """The ``failures`` and ``ejection`` parts of the node's ``GET /nodes`` entry."""
        record = self.of(node)
        until = record.ejected_until
        remaining = round(max(0.0, until - now), 3) if until else 0.0
        return (
            Failures(record.consecutive_failures, record.total_failures),
            Ejection(node.ejected, record.ejections, remaining),
        )
