"""Deferred parsing: chunks a resumable stream relays unchanged, parsed only when needed.

Before any seam (and without ``stop`` strings) the resumer changes nothing in
a stream, yet it must know the text so far if the stream breaks. Parsing
every chunk as it passes would cost a JSON parse per event on every stream
for the few that break. :class:`UnparsedBacklog` instead recognises, by byte
checks, the chunks that certainly need no change (content chunks, the
finish chunk, ``[DONE]``), passes them on and keeps them; the resumer parses
the backlog only at a break or at a chunk that is not plain (usage, errors,
aborts). An unbroken stream is parsed once: its finish chunk, alone.
"""

from __future__ import annotations

from .finish import unfinished
from .sse import DONE_EVENT, data_json, is_done, is_json_line

#: finish reasons that mean "the engine gave up on this request", not a real end.
ABORT_FINISH = frozenset({"abort", "error"})


class UnparsedBacklog:
    """The chunks of the first attempt relayed unchanged and not parsed yet."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.finish_passed = False  # the finish chunk went out (it is in ``events``)
        self.done_seen = False  # [DONE] went out after it: the client stream is complete

    def offer(self, event: bytes) -> bytes | None:
        """The client bytes for ``event`` when it can go out unparsed (it is kept);
        None when the resumer must parse it (and the backlog first)."""
        if plain(event):
            self.events.append(event)
            return event
        if is_done(event):
            if not self.finish_passed:
                return None  # the resumer decides (a truncated stream)
            self.done_seen = True
            return DONE_EVENT
        if self.finish_passed or not plain(event, finishing=True) or not _clean_finish(event):
            return None
        self.finish_passed = True
        self.events.append(event)
        return event

    def take(self) -> list[bytes]:
        """The kept events, oldest first; the backlog is empty afterwards."""
        events, self.events = self.events, []
        return events


def plain(event: bytes, *, finishing: bool = False) -> bool:
    """A one-line JSON chunk with no usage, no error and (unless ``finishing``) no
    finished choice."""
    if not is_json_line(event):
        return False
    if b'"error"' in event:
        return False
    usage = event.find(b'"usage":')
    if usage >= 0 and not event.startswith((b'"usage":null', b'"usage": null'), usage):
        return False
    return finishing or unfinished(event)


def _clean_finish(event: bytes) -> bool:
    """The chunk that finishes the single choice normally (parsed alone, once per stream)."""
    doc = data_json(event)
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or len(choices) != 1:
        return False
    choice = choices[0]
    return (
        isinstance(choice, dict)
        and not choice.get("index", 0)
        and choice.get("finish_reason") not in ABORT_FINISH
    )
