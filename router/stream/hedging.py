"""The I/O of hedging one stream: a continuation opened beside a stalled original.

:class:`~spotrelay.router.stream.hedge.HedgeRace` decides; :class:`Hedger` acts.
When the sweeper (:class:`~spotrelay.router.transport.upstream.IdleWatchdog`) finds the
stream's upstream stalled it calls :meth:`Hedger.on_stall`, which asks the
stream handler for the continuation a break would open now (the resumer's
``hedge_plan``), takes a retry-budget slot and opens the continuation in its
own thread (a greenlet under gevent) through the proxy, exactly as a resume
would. The relay keeps reading the original meanwhile:

* the original delivers first: the relay hands its events to the client and
  :meth:`Hedger.original_batch` cancels the continuation (its node
  connection is shut down, so the engine aborts it);
* the continuation's first event comes first: the original's socket is
  shut down, the relay's read fails, and the relay switches to the
  continuation (:meth:`Hedger.take`) as after any break.

A hedge costs the other node one prefill of the prompt plus the text so
far; the client sees nothing of a hedge that lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..retry import RetryBudget
from .disconnect import ClientLink
from .hedge import HedgeRace, HedgeState, Outcome

if TYPE_CHECKING:
    from ..transport.upstream import Upstream
    from .relay import StreamStart

log = logging.getLogger("spotrelay.router.stream.hedge")

T = TypeVar("T")
#: The continuation a break would open now: its body and the capabilities its node needs.
Plan = tuple[dict[str, Any], frozenset[str]]
#: Opens a continuation; the link lets the hedger cancel it (see :class:`ClientLink`).
HedgeOpener = Callable[[dict[str, Any], frozenset[str], ClientLink], "StreamStart"]


class _Hedge:
    """One running hedge: its generation, cancel link and (once done) result."""

    def __init__(self, generation: int, link: ClientLink) -> None:
        self.generation = generation
        self.link = link
        self.done = threading.Event()
        self.result: StreamStart | BaseException | None = None


class Hedger:
    """Runs the hedges of one stream (see the module docstring)."""

    def __init__(
        self,
        race: HedgeRace,
        plan: Callable[[], Plan | None],
        open_hedge: HedgeOpener,
        *,
        budget: RetryBudget,
        count: Callable[[Outcome], None],
        client_sock: Any = None,
        request_id: str | None = None,
    ) -> None:
        self.race = race
        self.plan = plan
        self.open_hedge = open_hedge
        self.budget = budget
        self.count = count
        self.client_sock = client_sock
        self.request_id = request_id
        self.current: _Hedge | None = None
        self.closed = False

    @property
    def won(self) -> bool:
        """The continuation won: the original's end is the switch, not a failure of its own."""
        return self.race.state is HedgeState.CONTINUATION_WON

    # -- the sweeper ----------------------------------------------------------------------

    def on_stall(self, original: Upstream) -> bool:
        """The original stalled: start a hedge if the race, the handler and the retry
        budget allow it; True when one started."""
        with self.race.lock:
            if self.closed or not self.race.can_begin():
                return False
            plan = self.plan()
            if plan is None or not self.budget.try_acquire():
                return False
            hedge = _Hedge(self.race.begin(), ClientLink(self.client_sock))
            self.current = hedge
        self.count(Outcome.STARTED)
        log.warning(
            "stream stalled on node %s (no event for %.1fs); hedging on another node",
            original.node.id,
            original.silent_s(),
            extra={"request_id": self.request_id},
        )
        thread = threading.Thread(
            target=self._run, args=(hedge, plan, original), name="hedge", daemon=True
        )
        thread.start()
        return True

    def _run(self, hedge: _Hedge, plan: Plan, original: Upstream) -> None:
        body, requires = plan
        try:
            try:
                start = self.open_hedge(body, requires, hedge.link)
            except Exception as exc:  # no node, no capacity, cancelled: the original goes on
                with self.race.lock:
                    self.race.continuation_failed(hedge.generation)
                hedge.result = exc
                log.info("hedge did not start: %s", exc, extra={"request_id": self.request_id})
                return
            with self.race.lock:
                won = not self.closed and self.race.continuation_delivered(hedge.generation)
            if not won:
                start.upstream.close(abort=True)
                hedge.result = RuntimeError("the original delivered first")
                return
            hedge.result = start
            self.count(Outcome.CONTINUATION_WON)
            log.warning(
                "hedge on node %s delivered first; closing the stalled original on node %s",
                start.upstream.node.id,
                original.node.id,
                extra={"request_id": self.request_id},
            )
            original.resp.interrupt()  # the relay's read fails now and it switches
        finally:
            self.budget.release()
            hedge.done.set()

    # -- the relay ------------------------------------------------------------------------

    def original_batch(self, process: Callable[[], T]) -> T | None:
        """Run ``process`` (the original's events to the client) unless the continuation
        won already (None then: drop them). A running hedge lost: cancel it."""
        race = self.race
        with race.lock:
            if race.state is HedgeState.WATCHING:  # the common case: no hedge running
                return process()
            hedging = race.hedging
            if not race.original_delivered():
                return None
            result = process()
        if hedging:
            self.count(Outcome.ORIGINAL_WON)
            self._cancel()
        return result

    def take(self) -> StreamStart | None:
        """After the original ended: the continuation to switch to (waiting for a hedge
        still opening), None when no hedge is running. Raises what made the hedge fail."""
        hedge = self.current
        with self.race.lock:
            running = self.race.original_broke()
        if hedge is None or not running:
            return None
        hedge.done.wait()
        self.current = None
        with self.race.lock:
            self.race.switched()
        result = hedge.result
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        """The stream is over (or goes on without a hedge): cancel and close any hedge."""
        with self.race.lock:
            self.closed = True
        self._cancel()
        hedge = self.current
        if (
            hedge is not None
            and hedge.done.is_set()
            and not isinstance(hedge.result, BaseException)
        ):
            if hedge.result is not None:
                hedge.result.upstream.close(abort=True)
            self.current = None

    def _cancel(self) -> None:
        hedge = self.current
        if hedge is not None and not hedge.done.is_set():
            hedge.link.gone = True
            hedge.link.abort_upstream()
