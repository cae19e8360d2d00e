"""Intent decomposition (↓): how much of the intent's content words each user turn repeats."""

from __future__ import annotations

from typing import Iterable, Sequence

from ...data.intents import strip_prefix
from ...data.text import STOPWORDS, words


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def turn_overlap(intent: str, turn: str) -> float:
    """|W(I) ∩ W(u)| / |W(u)|, W = lower-cased unigrams minus stop words; the fixed intent
    prefix is stripped first; 0 when the turn has no content words."""
    wu = content_words(turn)
    if not wu:
        return 0.0
    return len(content_words(strip_prefix(intent)) & wu) / len(wu)


def intent_decomposition(items: Iterable[tuple[str, Sequence[str]]]) -> float:
    """100 × mean of ``turn_overlap`` over every turn of every (intent, turns) item."""
    vals = [turn_overlap(intent, t) for intent, turns in items for t in turns]
    if not vals:
        raise ValueError("intent decomposition of zero turns")
    return 100.0 * sum(vals) / len(vals)
