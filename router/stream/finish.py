"""Whether an upstream stream really finished: every choice has a ``finish_reason``.

``data: [DONE]`` or a clean end of the body is not proof that an answer is
complete: llama.cpp's OpenAI server, for one, ends a running stream early,
cleanly and without a ``finish_reason``, when another request reaches it.
Passing that on would hand the client a truncated answer that looks
complete, which nobody notices. So the relay asks a :class:`FinishTracker`
fed with every upstream event; a stream that ends before every choice
finished is a break with reason ``truncated`` (resumed, or ended with the
SSE error event).
"""

from __future__ import annotations

from typing import Any

from .sse import data_json

_KEY = b'"finish_reason"'
_NULL_AFTER_KEY = (b'"finish_reason":null', b'"finish_reason": null')


def expected_choices(path: str, doc: Any) -> int | None:
    """How many choices a streaming request's answer has; None when unknown.

    ``n`` per prompt, and ``/v1/completions`` answers each prompt of a list of
    prompts (strings or token lists) separately.
    """
    if not isinstance(doc, dict):
        return None
    n = doc.get("n")
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        return None
    if path == "/v1/chat/completions":
        return n
    if path != "/v1/completions":
        return None
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return n * len(prompt)
    return n


def unfinished(event: bytes) -> bool:
    """An event that certainly finishes no choice: no ``finish_reason``, or only one
    that is ``null``. A byte search, no parsing (every relayed event is checked)."""
    i = event.find(_KEY)
    if i < 0:
        return True
    return event.startswith(_NULL_AFTER_KEY, i) and event.find(_KEY, i + len(_KEY)) < 0


class FinishTracker:
    """Counts the choices of one upstream stream that reported a ``finish_reason``.

    Cheap on the hot path: an event whose only ``finish_reason`` is ``null``
    (or that has none) is recognised by a byte search; only an event that
    finishes a choice is parsed. ``expected`` None disables the check (an
    endpoint whose answer shape the router does not know).
    """

    __slots__ = ("expected", "finished")

    def __init__(self, expected: int | None = 1) -> None:
        self.expected = expected
        self.finished: set[int] = set()

    @property
    def complete(self) -> bool:
        """Every expected choice has finished (always true when not checking)."""
        return self.expected is None or len(self.finished) >= self.expected

    def feed(self, event: bytes) -> None:
        """One complete upstream event (bytes as on the wire)."""
        if self.expected is None:
            return
        if not unfinished(event):
            self._parse(event)

    def _parse(self, event: bytes) -> None:
        doc = data_json(event)
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list):
            return
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                index = choice.get("index", 0)
                self.finished.add(index if isinstance(index, int) else 0)
