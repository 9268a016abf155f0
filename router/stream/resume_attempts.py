"""The resume budget of one stream, and what each continuation came to.

:class:`Attempts` counts continuations and usage probes against
``resume.max_attempts``, records each outcome (``ok``, ``failed``,
``exhausted``, ...) and the seam time (break to the first new content), and
reports them to a :class:`ResumeObserver` (the router's metrics). I/O-free;
the clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ResumeObserver(Protocol):
    """Where the resumer reports what happened (the router's metrics)."""

    def outcome(self, outcome: str) -> None:
        """One resume decision: ok, failed, exhausted, not_resumable, disabled, ..."""

    def resumed_tokens(self, tokens: int) -> None:
        """Tokens already generated that a continuation carries over."""

    def seam(self, seconds: float) -> None:
        """Time from the break to the first new content reaching the client."""


class NullObserver:
    def outcome(self, outcome: str) -> None:
        pass

    def resumed_tokens(self, tokens: int) -> None:
        pass

    def seam(self, seconds: float) -> None:
        pass


class Attempts:
    """The resume budget, and what each continuation came to (outcomes, seam time)."""

    def __init__(self, max_resumes: int, clock: Callable[[], float]) -> None:
        self.max_resumes = max_resumes
        self.resumes = 0  # continuation requests made
        self.probes = 0  # one-token requests made only to learn the prompt's token count
        self.outcomes: list[str] = []
        self.seam_seconds: list[float] = []
        self.observer: ResumeObserver = NullObserver()
        self._clock = clock
        self._seam_at: float | None = None  # when the current continuation was asked for
        self._live = False  # the current continuation has produced an event

    def record(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.observer.outcome(outcome)

    def used_up(self, probe: bool) -> int | None:
        """How many were used when the budget (resumes or probes) is spent, else None."""
        used = self.probes if probe else self.resumes
        return used if used >= self.max_resumes else None

    def begin(self, probe: bool) -> None:
        if probe:
            self.probes += 1
        else:
            self.resumes += 1
        self._live = False
        self._seam_at = self._clock()

    def first_event(self, probing: bool) -> None:
        """An event arrived; the first one of a continuation makes it a success."""
        if self._seam_at is not None and not self._live:
            self._live = True
            if not probing:  # a probe is bookkeeping, not a resume
                self.record("ok")

    def first_content(self) -> None:
        """New text reached the client: the seam is over."""
        if self._seam_at is not None:
            self.seam_seconds.append(self._clock() - self._seam_at)
            self.observer.seam(self.seam_seconds[-1])
            self._seam_at = None

    def broke(self, probing: bool) -> None:
        """The current attempt broke; a continuation that sent nothing failed."""
        if self._seam_at is not None and not self._live and not probing:
            self.record("failed")

    def end(self) -> None:
        self._seam_at = None
