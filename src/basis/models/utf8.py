"""Token-id / text agreement (DESIGN 1.3).

The rule, for both sides of the wire:

* The bytes of a token id are the binding's ``token_bytes(id)``; the bytes of a sequence of ids
  are the concatenation (``ModelBinding.detokenize``).
* The text that goes with ids is the output of an *incremental* UTF-8 decoder with replacement
  (Python's ``codecs.getincrementaldecoder("utf-8")(errors="replace")``, which follows the
  Unicode "maximal subpart" practice, the same as WHATWG's decoder) fed those bytes: a
  multi-byte character split across tokens is emitted once its last byte arrives; invalid
  bytes become U+FFFD.
* At the end of a job the decoder is flushed (``final=True``): an incomplete trailing character
  becomes U+FFFD. That flush text travels in the ``done`` frame.

``IncrementalText`` is what a worker/engine uses to produce text; ``UTF8Matcher`` is what the
gateway uses to check it and to count accepted tokens.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextMismatch(ValueError):
    """The text a worker sent disagrees with the bytes of the token ids it sent."""


def _decoder():
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class IncrementalText:
    """Bytes of token ids in, complete UTF-8 text out (the producer side of the rule)."""

    def __init__(self) -> None:
        self._dec = _decoder()

    def push(self, data: bytes) -> str:
        return self._dec.decode(data)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)

    @property
    def pending(self) -> bytes:
        return self._dec.getstate()[0]


class UTF8Matcher:
    """Checks, frame by frame, that text == incremental UTF-8 decode of the ids' bytes.

    ``feed(pieces, text)`` takes the bytes of each id in the frame (``binding.token_pieces(ids)``)
    and the frame's text. It raises ``TextMismatch`` as soon as the cumulative text disagrees
    with the cumulative decoded bytes (only an incomplete multi-byte tail, at most 3 bytes, may
    be held back), and otherwise returns how many tokens became *accepted*: a token is accepted
    once every one of its bytes is covered by text the worker sent. Zero-byte tokens (control
    tokens rendered as nothing) are accepted when everything before them is.

    ``finish(text)`` flushes: ``text`` must equal the decoder's final output ("" or U+FFFD...);
    it returns the number of tokens accepted by the flush.
    """

    def __init__(self) -> None:
        self._dec = _decoder()
        self._ends: list[int] = []  # cumulative byte end of each not-yet-accepted token
        self._total = 0  # bytes fed
        self.accepted = 0  # tokens accepted so far
        self.text_bytes = 0  # UTF-8 bytes of text accepted so far
        self.finished = False

    def _accept_upto(self, covered: int) -> int:
        n = 0
        while n < len(self._ends) and self._ends[n] <= covered:
            n += 1
        if n:
            del self._ends[:n]
            self.accepted += n
        return n

    def feed(self, pieces: Sequence[bytes] | bytes, text: str) -> int:
        if self.finished:
            raise TextMismatch("frame after finish")
        if isinstance(pieces, bytes | bytearray):
            pieces = [bytes(pieces)]
        data = b"".join(pieces)
        for p in pieces:
            self._total += len(p)
            self._ends.append(self._total)
        expected = self._dec.decode(data)
        if text != expected:
            raise TextMismatch(f"text {text!r} does not match the ids' bytes (expected {expected!r})")
        self.text_bytes += len(text.encode("utf-8", "surrogatepass"))
        held = len(self._dec.getstate()[0])
        return self._accept_upto(self._total - held)

    @property
    def held_back(self) -> int:
        """Bytes of an incomplete trailing character not yet covered by text."""
        return len(self._dec.getstate()[0])

    def finish(self, text: str = "") -> int:
        if self.finished:
            raise TextMismatch("finished twice")
        self.finished = True
        expected = self._dec.decode(b"", final=True)
        if text != expected:
            raise TextMismatch(f"final text {text!r} does not match the decoder flush {expected!r}")
        return self._accept_upto(self._total)
