"""Request-loop detection with hop marks nobody can replay.

A node URL may lead back to the router: directly (refused at registration,
:mod:`.netpolicy`) or through another router or load balancer. So every
attempt carries ``X-Spotrelay-Hop``: the marks the request arrived with plus
a fresh one for this attempt. A mark is 96 random bits, made per attempt and
*open* only while that attempt waits for its answer (or a stream's first
event); a request that arrives carrying one of this worker's open marks has
come round in a loop and is refused with 508.

Why per attempt rather than one id per router (the earlier design): the
router sends its mark to every engine, so an engine, or a client that
learned the mark from one, could replay it and get 508s, and a second
router relaying such requests ejected the first router's node. A mark here
is useless once its attempt has its answer (milliseconds for a non-loop),
and while open it only refuses the replayer's own request; a 508 never
ejects a node (:class:`~spotrelay.router.retry.Failure`).

Marks are per worker process. A loop that comes back to another worker of
this router does not find its mark there and goes round again, adding that
worker's; by the pigeonhole principle it reaches a worker whose mark is open
within (workers + 1) passes through this router. :data:`MAX_HOPS` marks are
passed on, more than the workers of any router, so the loop is always closed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

HOP_HEADER = "X-Spotrelay-Hop"  # marks of the attempts a request went through
LOOP_HEADER = "X-Spotrelay-Loop"  # on a 508: this router refused a request it had sent itself
MAX_HOPS = 64  # marks passed on (the most recent); a loop closes within workers + 1 passes
MARK_BYTES = 12


class LoopMarks:
    """This worker's open hop marks: one per attempt waiting for its answer."""

    def __init__(self) -> None:
        self._open: set[str] = set()
        self._lock = threading.Lock()

    def issued(self) -> IssuedMark:
        """A fresh mark, open until the block ends (the attempt has its answer or failed)."""
        return IssuedMark(self._open, self._lock)

    def loops_back(self, hops: Iterable[str]) -> bool:
        """Does a request carrying ``hops`` come from one of this worker's waiting attempts?"""
        return any(mark in self._open for mark in hops)

    def open_count(self) -> int:
        return len(self._open)


class IssuedMark:
    """The block of :meth:`LoopMarks.issued`: a class, not a generator, because every
    attempt opens one (a generator-based context manager costs about five more
    Python calls)."""

    __slots__ = ("_lock", "_open", "mark")

    def __init__(self, open_marks: set[str], lock: threading.Lock) -> None:
        self._open, self._lock = open_marks, lock
        self.mark = ""

    def __enter__(self) -> str:
        mark = self.mark = os.urandom(MARK_BYTES).hex()
        with self._lock:
            self._open.add(mark)
        return mark

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._open.discard(self.mark)


def parse_hops(header: str | None) -> tuple[str, ...]:
    """Marks from ``X-Spotrelay-Hop`` (comma-separated): the last MAX_HOPS, each clipped.

    The bounds only keep a client's made-up list from growing the header; a
    made-up or replayed mark is never an open one.
    """
    if not header:
        return ()
    marks = [h.strip()[:64] for h in header[:8192].split(",") if h.strip()]
    return tuple(marks[-MAX_HOPS:])


def hop_header(hops: tuple[str, ...], mark: str) -> str:
    """What an attempt sends: the marks it arrived with (the most recent) and its own."""
    return ", ".join((*hops[-(MAX_HOPS - 1) :], mark))
