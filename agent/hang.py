"""Is the engine hung? Decided without I/O from what each probe saw, with the time passed in.

A hung GPU (an Xid error, a stuck collective) leaves vLLM's HTTP server up:
``/health`` may still answer, but no token comes out. Two signs give it away:

- the health check does not answer within ``engine.timeout_s`` (an engine
  stopped by SIGSTOP, swapped out, or with a wedged event loop), and
- ``/metrics`` shows requests running while ``vllm:generation_tokens_total``
  stands still for ``engine.stall_after_s`` (the server answers, the GPU
  does not).

Either makes the agent report ``unhealthy`` to the routers at once, so they
move the node's open requests elsewhere instead of waiting for its heartbeats
to expire; a later probe that finds the engine answering and generating makes
it ``ready`` again. :class:`TokenStall` is the second sign's state.

A stalled engine stays suspect until its counter moves again. Work leaving it
proves nothing: the routers take their requests away from an ``unhealthy``
node, and a hung engine with nothing to do would otherwise look healthy,
take new work, stall again, and flap for ever (and self-healing, which needs
the engine unready for a while, would never replace it). So once idle, a
suspect engine is asked for one token (:meth:`TokenStall.needs_canary`); an
answer in time clears it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenStall:
    """Requests running while the generated-token counter stands still for ``after_s``.

    ``observe`` is fed every probe's ``running`` gauge and generated-token
    counter (``None`` when the engine does not export it: then it never
    stalls, as an engine we cannot watch must not be reported hung). A
    counter that goes backwards (the engine restarted) counts as progress.
    """

    after_s: float
    _last: float | None = None
    _since: float | None = None  # when the counter last moved (or work appeared)
    suspect: bool = False  # stalled, and no token seen since

    def observe(self, now: float, running: int | None, generated: float | None) -> bool:
        """True while the engine is stalled (or suspect: see the module docstring)."""
        if self.after_s <= 0 or generated is None:
            self.reset()
            return False
        moved = self._last is not None and generated != self._last
        self._last = generated
        if moved:
            self.suspect = False
        if self.suspect:
            return True
        if not running:
            self._since = None
            return False
        if self._since is None or moved:
            self._since = now
            return False
        if now - self._since >= self.after_s:
            self.suspect = True
        return self.suspect

    def needs_canary(self, running: int | None) -> bool:
        """Suspect with nothing running: only a request of our own can show it works."""
        return self.suspect and not running

    def recovered(self) -> None:
        """A canary was answered: the engine generates again."""
        self.suspect = False
        self._since = None

    def stalled_for(self, now: float) -> float:
        """Seconds since the counter last moved with work running (0 when not watching)."""
        return 0.0 if self._since is None else now - self._since

    def reset(self) -> None:
        self._last = self._since = None
        self.suspect = False
