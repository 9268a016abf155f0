"""Noticing a stalled stream from its own rhythm, and the hedge race that follows. I/O-free.

A node that freezes (a hung GPU, a stopped process, a host gone without a
FIN) leaves its streams open and silent. Waiting for ``timeouts.stream_idle_s``
costs the client a minute; cutting at the first long gap would turn every
harmless pause (another request's prefill holding decode, a GC pause) into a
re-prefill. So a stream is watched against its own rhythm:

* :class:`Rhythm` keeps an exponentially weighted mean of inter-event gaps,
  one per stream and one per node (fed with its streams' gaps);
* :class:`StallPolicy` says when a gap is a stall: longer than
  ``max(stall_floor_s, stall_multiple * recent gap)``, where the recent gap
  is the larger of the stream's and the node's;
* :class:`HedgeRace` decides what happens next without cutting anything: the
  continuation opens on another node (a *hedge*) while the original stays
  open, and whichever delivers first wins; the loser is closed.

The relay (:mod:`.stream`) and the sweeper (:class:`~.upstream.IdleWatchdog`)
do the I/O and call in here. Every transition happens under
:attr:`HedgeRace.lock`, which the relay also holds while it feeds an
original's events to the resumer: the continuation body a hedge opens is
built from exactly the text the client has, and nothing the original sends
after that reaches the client unless the original wins first. That is what
keeps the client's text exact when both sides deliver at the same moment.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: Weight of the newest gap in a rhythm's mean: about the last ten gaps count.
RHYTHM_ALPHA = 0.1


class Rhythm:
    """The recent inter-event gap of a stream (or of all streams on a node)."""

    __slots__ = ("gap_s",)

    def __init__(self) -> None:
        self.gap_s: float | None = None

    def observe(self, gap_s: float) -> None:
        if gap_s < 0:
            return
        if self.gap_s is None:
            self.gap_s = gap_s
        else:
            self.gap_s += RHYTHM_ALPHA * (gap_s - self.gap_s)


@dataclass(frozen=True)
class StallPolicy:
    """When a gap is a stall, and how far hedging may go (the ``hedge.*`` settings)."""

    enabled: bool = True
    stall_multiple: float = 8.0
    stall_floor_s: float = 1.5
    max_per_stream: int = 2
    frozen_min_streams: int = 2

    def threshold(self, stream: Rhythm, node: Rhythm | None) -> float:
        """The gap beyond which a stream with these rhythms counts as stalled."""
        gaps = [r.gap_s for r in (stream, node) if r is not None and r.gap_s is not None]
        recent = max(gaps) if gaps else 0.0
        return max(self.stall_floor_s, self.stall_multiple * recent)


class StallWatch:
    """One stream's rhythm, fed by the relay with the gap before each upstream read."""

    __slots__ = ("node", "policy", "stream")

    def __init__(self, policy: StallPolicy, node: Rhythm | None) -> None:
        self.policy = policy
        self.stream = Rhythm()
        self.node = node

    def observe(self, gap_s: float) -> None:
        self.stream.observe(gap_s)
        if self.node is not None:
            self.node.observe(gap_s)

    def threshold(self) -> float:
        return self.policy.threshold(self.stream, self.node)

    def stalled(self, silent_s: float) -> bool:
        return silent_s > self.threshold()


def race_lock() -> AbstractContextManager[Any]:
    """The lock of a :class:`HedgeRace`: a real one with OS threads (the gthread worker).

    Under gevent (the default worker) greenlets switch only at I/O, and nothing
    done under this lock does I/O (state transitions, the resumer parsing
    events), so no other greenlet can ever find it taken: a gevent lock would
    only cost time, ~2.5 µs on every upstream read of every hedgeable stream.
    """
    with contextlib.suppress(ImportError):
        from gevent import monkey

        if monkey.is_module_patched("threading"):
            return contextlib.nullcontext()
    return threading.Lock()


class HedgeState(StrEnum):
    WATCHING = "watching"  # no hedge running
    HEDGING = "hedging"  # a continuation is opening; the original is still open
    CONTINUATION_WON = "continuation_won"  # the relay switches to the continuation


class Outcome(StrEnum):
    """The label values of ``spotrelay_router_hedges_total{outcome}``."""

    STARTED = "started"
    ORIGINAL_WON = "original_won"
    CONTINUATION_WON = "continuation_won"


class HedgeRace:
    """The hedge decisions of one stream; call every method with :attr:`lock` held.

    ``begin`` (the sweeper saw a stall) starts a hedge; then exactly one of
    ``original_delivered`` and ``continuation_delivered`` wins it. A hedge
    whose continuation could not open (``continuation_failed``) leaves the
    original alone and lets another begin after ``retry_s``. Each hedge has a
    generation, so a late answer of an old hedge never wins a newer one.
    ``outcomes`` lists what happened, for metrics and tests.
    """

    def __init__(
        self,
        max_hedges: int,
        *,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self.max_hedges = max_hedges
        self.retry_s = retry_s
        self.clock = clock
        self.state = HedgeState.WATCHING
        self.generation = 0
        self.hedges = 0
        self.original_lost = False  # the original broke while a hedge was opening
        self.outcomes: list[Outcome] = []
        self._not_before = float("-inf")

    @property
    def hedging(self) -> bool:
        return self.state is HedgeState.HEDGING

    def can_begin(self) -> bool:
        return (
            self.state is HedgeState.WATCHING
            and self.hedges < self.max_hedges
            and self.clock() >= self._not_before
        )

    def begin(self) -> int:
        """Start a hedge (check :meth:`can_begin` first); returns its generation."""
        assert self.can_begin()
        self.state = HedgeState.HEDGING
        self.hedges += 1
        self.generation += 1
        self.original_lost = False
        self.outcomes.append(Outcome.STARTED)
        return self.generation

    def original_delivered(self) -> bool:
        """The original sent events. True: they go to the client (a running hedge lost and
        must be cancelled); False: the continuation won already, drop them."""
        if self.state is HedgeState.CONTINUATION_WON:
            return False
        if self.state is HedgeState.HEDGING:
            self.outcomes.append(Outcome.ORIGINAL_WON)
            self.state = HedgeState.WATCHING
        return True

    def continuation_delivered(self, generation: int) -> bool:
        """Hedge ``generation`` has its first event. True: it won (the original is to be
        closed and the relay switches); False: too late, close it."""
        if self.state is not HedgeState.HEDGING or generation != self.generation:
            return False
        self.state = HedgeState.CONTINUATION_WON
        self.outcomes.append(Outcome.CONTINUATION_WON)
        return True

    def continuation_failed(self, generation: int) -> None:
        """Hedge ``generation`` could not open: the original goes on alone for now."""
        if self.state is HedgeState.HEDGING and generation == self.generation:
            self.state = HedgeState.WATCHING
            self._not_before = self.clock() + self.retry_s

    def original_broke(self) -> bool:
        """The original ended (broke, or was cut); True when a hedge is open to take over."""
        self.original_lost = True
        return self.state is not HedgeState.WATCHING

    def switched(self) -> None:
        """The relay moved to the winning continuation: a new stall may hedge again."""
        if self.state is HedgeState.CONTINUATION_WON:
            self.state = HedgeState.WATCHING
