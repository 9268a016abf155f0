"""Deterministic "model": tokenizer, chat template, next-token rule, embeddings.

The simulator's text exists to make failover testable, so it has three exact
properties (all checked by property tests):

* **Each token is a function of the full text before it** (a word picked by a
  BLAKE2b hash of that text). Generating N tokens from P therefore equals
  generating k tokens from P and then N-k from P + those k tokens' text.
* **Tokenization is stable at the seam**: ``tokenize(P + generated) ==
  tokenize(P) + generated_tokens`` for any P. A router that resumes a stream
  with prompt P + k tokens sees ``prompt_tokens`` grow by exactly k.
* **The chat template continues a final message**: rendering the messages
  with a generation prompt and appending the generated text gives the same
  string as rendering them plus the partial assistant message with
  ``continue_final_message`` (vLLM's semantics: no end marker after it).

The tokenizer is a GPT-2-like regex: a word with an optional leading space,
one punctuation character with an optional leading space, or one whitespace
character. Generated tokens are chosen so that they never merge with the text
before them (see :func:`_next_kind`).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

TOKEN_RE = re.compile(r" ?\w+| ?[^\w\s]|\s")
_WORD_CHAR = re.compile(r"\w")
_SPACE_CHAR = re.compile(r"\s")

# ~200 plain words: enough variety that stop strings and tests are meaningful.
WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is was for on that with as by at from it this be are or an
    which have not has but were they their one all can been more other new when
    there some time only would about its may into first also after two over most
    these many such where then made like part between each him work years used
    state through three well even under city could while later being during both
    life world system number against known however early until home around water
    light river small house music power order field paper market stone garden
    signal engine cloud spot node route stream token queue price model server
    window bridge forest island valley harbor mountain lantern compass journey
    silver golden purple orange yellow green blue quiet rapid gentle bright
    ancient modern simple careful steady clever honest patient curious brave
    calm eager fair kind proud wise bold keen warm cold soft loud fast slow
    read write build carry follow gather listen measure notice offer reach
    return share travel wander answer borrow create decide explain imagine
    improve invite manage prepare protect provide recover repair resume
    balance capacity failover latency request response reclaim instance region
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_CAPITAL: tuple[str, ...] = tuple(w.capitalize() for w in WORDS)

# What may follow the text so far, by its last character (see module docstring).
_AFTER_START = 0  # empty text, or whitespace other than " " (newline, tab): "Word"
_AFTER_SPACE = 1  # a literal space: " word" (a bare word would merge with it)
_AFTER_WORD = 2  # a word character: " word", "," or "."
_AFTER_PERIOD = 3  # ".": " Word" or a newline
_AFTER_PUNCT = 4  # other punctuation: " word"


def _kind_of(last: str) -> int:
    """Classify the last character of the text so far (as the tokenizer sees it)."""
    if not last:
        return _AFTER_START
    if last == " ":
        return _AFTER_SPACE
    if _WORD_CHAR.match(last):
        return _AFTER_WORD
    if last == ".":
        return _AFTER_PERIOD
    if _SPACE_CHAR.match(last):
        return _AFTER_START
    return _AFTER_PUNCT


def tokenize(text: str) -> list[str]:
    """The token strings of ``text`` (they concatenate back to ``text``)."""
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN_RE.finditer(text))


def _encode(text: str) -> bytes:
    # Lone surrogates can arrive through JSON ("\ud800"); hash them, don't crash.
    return text.encode("utf-8", "surrogatepass")


class TokenStream:
    """Generates the tokens that follow ``prefix``, one at a time.

    Hashing is incremental (the BLAKE2b state of the text so far is kept and
    copied per token), so each token costs O(1) regardless of context length.
    """

    __slots__ = ("_hash", "_kind")

    def __init__(self, prefix: str) -> None:
        self._hash = hashlib.blake2b(_encode(prefix), digest_size=8)
        self._kind = _kind_of(prefix[-1:])

    def next(self) -> str:
        value = int.from_bytes(self._hash.copy().digest(), "little")
        kind = self._kind
        word = value % len(WORDS)
        if kind == _AFTER_START:
            token = _CAPITAL[word]
            self._kind = _AFTER_WORD
        elif kind == _AFTER_WORD:
            roll = (value >> 32) % 12
            if roll == 0:
                token, self._kind = ".", _AFTER_PERIOD
            elif roll == 1:
                token, self._kind = ",", _AFTER_PUNCT
            else:
                token, self._kind = " " + WORDS[word], _AFTER_WORD
        elif kind == _AFTER_PERIOD:
            if (value >> 32) % 6 == 0:
                token, self._kind = "\n", _AFTER_START
            else:
                token, self._kind = " " + _CAPITAL[word], _AFTER_WORD
        else:  # after a space or punctuation
            token, self._kind = " " + WORDS[word], _AFTER_WORD
        self._hash.update(_ENCODED.get(token) or _encode(token))
        return token


_ENCODED: dict[str, bytes] = {
    tok: tok.encode()
    for tok in (*WORDS, *_CAPITAL, *(" " + w for w in WORDS), *(" " + w for w in _CAPITAL))
}
_ENCODED.update({".": b".", ",": b",", "\n": b"\n"})


def generate(prefix: str, n: int) -> list[str]:
    """The ``n`` tokens that follow ``prefix``."""
    stream = TokenStream(prefix)
    return [stream.next() for _ in range(n)]


# ---------------------------------------------------------------------------
# Chat template

END = "<|end|>"


def message_text(content: Any) -> str:
    """A message's content as text: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
    return "\n".join(parts)


def render_chat(
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> str:
    """The prompt text for ``messages``.

    Each message is ``<|role|>\\n{content}<|end|>\\n``; the generation prompt
    is ``<|assistant|>\\n``. With ``continue_final_message`` the last message
    is left open (no ``<|end|>\\n``) so generation continues its content.
    """
    out = []
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        out.append(f"<|{msg.get('role', 'user')}|>\n")
        out.append(message_text(msg.get("content")))
        if not (continue_final_message and i == last):
            out.append(END + "\n")
    if add_generation_prompt and not continue_final_message:
        out.append("<|assistant|>\n")
    return "".join(out)


# ---------------------------------------------------------------------------
# Embeddings


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text`` (equal texts, equal vectors)."""
    seed = hashlib.blake2b(_encode(text), digest_size=32).digest()
    raw = bytearray()
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.blake2b(seed + counter.to_bytes(4, "little"), digest_size=64).digest()
        counter += 1
    ints = struct.unpack(f"<{dimensions}I", bytes(raw[: dimensions * 4]))
    vec = [i / 2147483647.5 - 1.0 for i in ints]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def pack_float32(values: Iterable[float]) -> bytes:
    vals = list(values)
    return struct.pack(f"<{len(vals)}f", *vals)


# ---------------------------------------------------------------------------
# Token ids (/tokenize, /detokenize)

# Every token the generator can emit has a small id; any other token's id
# encodes its UTF-8 bytes, so ids are the same on every simulator process and
# /detokenize inverts /tokenize exactly (a router may send them to different nodes).
VOCAB: tuple[str, ...] = tuple(sorted(_ENCODED))
_VOCAB_ID = {tok: i for i, tok in enumerate(VOCAB)}
_BYTES_BASE = 1 << 20


def token_ids(text: str) -> list[int]:
    """The token ids of ``text`` (one per :func:`tokenize` token)."""
    out = []
    for tok in tokenize(text):
        known = _VOCAB_ID.get(tok)
        out.append(
            known
            if known is not None
            else _BYTES_BASE + int.from_bytes(b"\x01" + _encode(tok), "big")
        )
    return out


def detokenize(ids: Iterable[int]) -> str:
    """The text of ``ids`` (raises ValueError for an id no tokenizer call made)."""
    parts = []
    for i in ids:
        if 0 <= i < len(VOCAB):
            parts.append(VOCAB[i])
        elif i >= _BYTES_BASE:
            raw = (i - _BYTES_BASE).to_bytes(((i - _BYTES_BASE).bit_length() + 7) // 8, "big")
            if not raw.startswith(b"\x01"):
                raise ValueError(f"unknown token id {i}")
            parts.append(raw[1:].decode("utf-8", "surrogatepass"))
        else:
            raise ValueError(f"unknown token id {i}")
    return "".join(parts)


def relevance(query: str, document: str) -> float:
    """A deterministic relevance score in [0, 1]: the embeddings' cosine, rescaled."""
    a, b = embed(query, 64), embed(document, 64)
    return (1.0 + sum(x * y for x, y in zip(a, b, strict=True))) / 2.0
