"""The writes on their way to Redis, and what is kept for the write-back while it is away.

The registry hands :class:`~spotrelay.router.registry.sync.RedisSync` every
local op; those others must see become writes queued here, for the writer
thread. While Redis is down a write is not sent but kept: the latest
heartbeat per node, and its drain or delete (a delete wins over a drain and
over older heartbeats; a heartbeat after a delete means the node registered
again). Expiries are not kept: whichever worker still sees the node silent
redoes one. When Redis is back the follower takes what was kept
(:meth:`Outbox.take`) for its write-back; anything kept while that runs is
queued again by :meth:`Outbox.go_up`. It also remembers which nodes this
worker heard from itself, the only ones a write-back may send.

No I/O; one lock, which also guards ``up`` so a write is either kept before
Redis counts as up (and requeued) or sent after, never kept with nobody left
to requeue it.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace
from typing import Any

from .ops import Delete, Drain, Expire


@dataclass(frozen=True)
class SharedPut:
    """A heartbeat this worker received, as the agent sent it, and when (local clock).

    ``write_back``: sent again after an outage, so written only where Redis has
    nothing newer, aged by the time since it arrived.
    """

    node_id: str
    url: str
    report: dict[str, Any]
    drained: bool
    received: float
    write_back: bool = False


Write = SharedPut | Drain | Delete | Expire
Kept = dict[str, Drain | Delete]


class Outbox:
    def __init__(self) -> None:
        self.up = False
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._ops: Kept = {}
        self._puts: dict[str, SharedPut] = {}
        # Nodes this worker heard from directly (id -> local clock of the last heartbeat).
        self._heard: dict[str, float] = {}
        self._lock = threading.Lock()

    def send(self, write: Write) -> None:
        """Queue a write (never blocks)."""
        with self._lock:
            if isinstance(write, SharedPut):
                if isinstance(self._ops.get(write.node_id), Delete):  # registered again since
                    del self._ops[write.node_id]
                self._heard[write.node_id] = write.received
            elif isinstance(write, Delete):
                self._heard.pop(write.node_id, None)
        self._queue.put(write)

    def next(self) -> Write | None:
        """The next write to send (blocks); None once closed."""
        return self._queue.get()

    def close(self) -> None:
        self._queue.put(None)

    def keep_if_down(self, write: Write) -> bool:
        """Keep the write for the write-back if Redis is down; True if kept."""
        with self._lock:
            if self.up:
                return False
            self._keep(write)
            return True

    def keep(self, write: Write) -> None:
        """A write that failed: kept for the write-back after the reconnect."""
        with self._lock:
            self._keep(write)

    def _keep(self, write: Write) -> None:
        node_id = write.node_id
        if isinstance(write, SharedPut):
            self._puts[node_id] = write
            if isinstance(self._ops.get(node_id), Delete):  # registered again since
                del self._ops[node_id]
        elif isinstance(write, Delete):
            self._ops[node_id] = write
            self._puts.pop(node_id, None)
        elif isinstance(write, Drain) and not isinstance(self._ops.get(node_id), Delete):
            self._ops[node_id] = write

    def take(self) -> tuple[Kept, dict[str, SharedPut]]:
        """Everything kept (drains and deletes, heartbeats); the outbox keeps nothing after."""
        with self._lock:
            return self._take()

    def _take(self) -> tuple[Kept, dict[str, SharedPut]]:
        ops, self._ops = self._ops, {}
        puts, self._puts = self._puts, {}
        return ops, puts

    def give_back(self, ops: Kept, puts: dict[str, SharedPut]) -> None:
        """Put back what a failed write-back took; anything newer kept meanwhile wins."""
        with self._lock:
            self._ops = {**ops, **self._ops}
            self._puts = {**puts, **self._puts}

    def heard(self, known: set[str], puts: dict[str, SharedPut]) -> dict[str, float]:
        """The nodes heard from directly that are still in the view (or have a kept heartbeat)."""
        with self._lock:
            self._heard = {i: t for i, t in self._heard.items() if i in known or i in puts}
            return dict(self._heard)

    def go_up(self) -> None:
        """Redis is up: what was kept meanwhile goes out now, heartbeats before drains and
        deletes (as in the write-back: a drain needs its node in Redis)."""
        with self._lock:
            self.up = True
            ops, puts = self._take()
        for put in puts.values():
            self._queue.put(replace(put, write_back=True))
        for op in ops.values():
            self._queue.put(op)
