"""Stop strings across a seam: hold back what could begin one, find one that spans it.

A continuation's engine only checks ``stop`` against its *new* text, so a
stop string that starts in text generated before the break and ends after
it would go unnoticed. :class:`StopHoldback` keeps the few trailing
characters of the output that could begin a stop string (at most the
longest stop string - 1, and only while they match one), releasing them as
soon as they cannot, and after a seam looks for a stop string that *began*
before it. Everything else is the engine's business, so without a seam it
changes nothing. I/O-free; one per streaming request.
"""

from __future__ import annotations


class StopHoldback:
    """The client-visible text filter for one stream's ``stop`` strings."""

    def __init__(self, stops: tuple[str, ...], include_stop: bool) -> None:
        self.stops = stops
        self.include_stop = include_stop  # include_stop_str_in_output
        self._maxstop = max((len(s) for s in stops), default=0)
        self.held = ""  # generated but not yet sent: might begin a stop string
        self._tail = ""  # last sent characters (include_stop_str_in_output only)
        self._carry = 0  # chars of held/_tail that came from earlier attempts

    def seam(self) -> None:
        """A continuation starts: what is held (or the tail) came before the seam."""
        self._carry = len(self._tail) if self.include_stop else len(self.held)

    def take_held(self) -> str:
        """The held-back text, to send now (the stream ends here)."""
        held, self.held = self.held, ""
        return held

    def filter(self, text: str, *, finishing: bool, check: bool) -> tuple[str, str | None]:
        """The part of ``text`` to show now, and the stop string hit across a seam (if any).

        ``check``: whether a stop string may end here at all (``min_tokens`` reached).
        """
        check = check and self._carry > 0
        if self.include_stop:
            window = self._tail + text
            if check:
                hit = self._find_stop(window, self._carry, len(self._tail))
                if hit is not None:
                    end, stop = hit
                    shown = window[len(self._tail) : end]
                    self._remember_tail(shown)
                    return shown, stop
            self._remember_tail(text)
            return text, None
        pending = self.held + text
        if check:
            hit = self._find_stop(pending, self._carry, 0)
            if hit is not None:
                end, stop = hit
                self.held = ""
                self._carry = 0
                return pending[: end - len(stop)], stop
        if finishing:
            self.held = ""
            self._carry = 0
            return pending, None
        keep = self._stop_prefix_len(pending)
        cut = len(pending) - keep
        self.held = pending[cut:]
        self._carry = max(0, self._carry - cut)
        return pending[:cut], None

    def _remember_tail(self, shown: str) -> None:
        tail = self._tail + shown
        cut = max(0, len(tail) - (self._maxstop - 1))
        self._tail = tail[cut:]
        self._carry = max(0, self._carry - cut)

    def _find_stop(self, window: str, carry: int, min_end: int) -> tuple[int, str] | None:
        """Earliest-completing stop string in ``window`` that starts before ``carry``."""
        best: tuple[int, str] | None = None
        for stop in self.stops:
            start = window.find(stop)
            while start != -1 and start < carry:
                end = start + len(stop)
                if end > min_end:
                    if best is None or end < best[0]:
                        best = (end, stop)
                    break
                start = window.find(stop, start + 1)
        return best

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for n in range(min(len(text), self._maxstop - 1), 0, -1):
            suffix = text[-n:]
            if any(len(s) > n and s.startswith(suffix) for s in self.stops):
                return n
        return 0
