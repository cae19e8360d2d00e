"""Text of a growing list of token ids, in constant work per token.

Decoding the whole reply again after every sampled token costs O(n^2) over a reply; here each
token decodes a short window: the ids since the last complete piece of text (``prefix``) and
the new ones.  The text added is the difference between the two decodes, so a decoder that
treats the start of its input specially (a stripped leading space) changes both alike, and a
token that ends inside a multi-byte character waits until the character is complete.
Works with any tokenizer that has ``decode(ids, skip_special=...)``.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer, *, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.text = ""  # the complete text so far
        self._prefix = 0  # window start: ids before it are in ``text`` and never decoded again
        self._read = 0  # ids before it are in ``text``

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=self.skip_special)

    def push(self, token: int) -> str:
        """Add one id; returns the text it completes ("" while a character is still partial)."""
        self.ids.append(int(token))
        before = self._decode(self.ids[self._prefix:self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) <= len(before) or now.endswith(REPLACEMENT):
            return ""
        piece = now[len(before):]
        self.text += piece
        self._prefix, self._read = self._read, len(self.ids)
        return piece

    def flush(self) -> str:
        """The text of ids still held back (an incomplete character decodes as U+FFFD, as a
        whole decode would); afterwards ``text`` is the whole text."""
        if self._read == len(self.ids):
            return ""
        before = self._decode(self.ids[self._prefix:self._read])
        piece = self._decode(self.ids[self._prefix:])[len(before):]
        self.text += piece
        self._prefix = self._read = len(self.ids)
        return piece
