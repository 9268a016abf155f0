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

    def observe(self, now: float, running: int | None, generated: float | None) -> bool:
        """True while the engine is stalled."""
        if self.after_s <= 0 or generated is None or not running:
            self._last, self._since = generated, None
            return False
        if self._since is None or generated != self._last:
            self._last, self._since = generated, now
            return False
        return now - self._since >= self.after_s

    def stalled_for(self, now: float) -> float:
        """Seconds since the counter last moved with work running (0 when not watching)."""
        return 0.0 if self._since is None else now - self._since

    def reset(self) -> None:
        self._last = self._since = None
