"""Repetition in an assistant's replies, the failure that makes a simulated conversation useless:
a reply that repeats an earlier reply of the same conversation, and a reply that loops inside
itself.  Pure functions over texts (no model calls).

* ``repeats_earlier(reply, earlier)``: at least ``REPEAT_SHARE`` of the reply's word 3-grams
  occur in one earlier reply of the conversation (containment, so a longer copy with a new tail
  still counts); replies under 3 words never count.
* ``loops(reply)``: the reply's text compresses (zlib, level 9) to at most ``LOOP_RATIO`` of its
  UTF-8 size, with at least ``LOOP_MIN_CHARS`` of it.  Prose and code compress to about 0.4-0.6 at
  these lengths (1% of ShareGPT's held-out replies of 200+ characters fall under 0.26); a phrase
  or line said over and over ("a man of the heart, a man of the heart, ...", "#define NUM_LEDS 10
  #define NUM_LEDS 11 ...") to well under 0.25 (0.08 and 0.18).
"""

from __future__ import annotations

import zlib
from typing import Sequence

from ...data.text import words

REPEAT_SHARE = 0.5
LOOP_RATIO = 0.25
LOOP_MIN_CHARS = 200


def _trigrams(text: str) -> set[tuple[str, ...]]:
    w = [x.lower() for x in words(text)]
    return {tuple(w[i:i + 3]) for i in range(len(w) - 2)}


def repeats_earlier(reply: str, earlier: Sequence[str]) -> bool:
    mine = _trigrams(reply)
    if not mine:
        return False
    return any(len(mine & _trigrams(e)) >= REPEAT_SHARE * len(mine) for e in earlier)


def compression_ratio(text: str) -> float:
    raw = text.encode()
    return len(zlib.compress(raw, 9)) / len(raw) if raw else 1.0


def loops(reply: str) -> bool:
    return len(reply.encode()) >= LOOP_MIN_CHARS and compression_ratio(reply) <= LOOP_RATIO


def assistant_repetition(conversations: Sequence[Sequence[str]]) -> dict:
    """Over conversations given as their assistant replies in order: how many replies repeat an
    earlier one, how many loop, and how many conversations have every reply after the first a repeat."""
    n = rep = loop = all_rep = multi = 0
    for replies in conversations:
        flags = [repeats_earlier(r, replies[:i]) for i, r in enumerate(replies)]
        n += len(replies)
        rep += sum(flags)
        loop += sum(loops(r) for r in replies)
        if len(replies) > 1:
            multi += 1
            all_rep += all(flags[1:])
    return {"replies": n, "repeat_earlier": rep, "loop_inside": loop,
            "share_repeat_earlier": rep / n if n else float("nan"),
            "share_loop_inside": loop / n if n else float("nan"),
            "conversations_with_2_plus_replies": multi, "conversations_all_repeats": all_rep}
