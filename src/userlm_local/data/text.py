"""Small text helpers shared by the data and metrics code: word regex, stop words, English check."""

from __future__ import annotations

import re

WORD_RE = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)?")

# A compact English stop-word list (function words only), used for the English check,
# for intent topics and for the intent-decomposition metric.
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just let me
more most my myself no nor not now of off on once only or other our ours ourselves out over own same
she should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves i'm i've i'd i'll it's don't can't doesn't isn't what's
that's there's let's you're we're they're didn't won't wouldn't shouldn't couldn't aren't wasn't
""".split())

_ASCII_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``[a-z0-9]+(?:['’-][a-z0-9]+)?``)."""
    return WORD_RE.findall(text.lower().replace("’", "'"))


_ASCII_LETTERS = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def english_scores(text: str, max_chars: int = 20000) -> tuple[float, float, int]:
    """(ASCII share of letters, stop-word share of ASCII words, number of ASCII words),
    measured on the first ``max_chars`` characters."""
    text = text[:max_chars]
    n_ascii = len(text) - len(text.translate(_ASCII_LETTERS))
    n_other = sum(1 for c in _NON_ASCII.findall(text) if c.isalpha())
    if n_ascii + n_other == 0:
        return 0.0, 0.0, 0
    ascii_share = n_ascii / (n_ascii + n_other)
    toks = _ASCII_WORD.findall(text.lower().replace("’", "'"))
    stop_share = sum(1 for w in toks if w in STOPWORDS) / len(toks) if toks else 0.0
    return ascii_share, stop_share, len(toks)


def is_english(text: str, *, min_ascii: float = 0.9, min_stop: float = 0.06, min_words: int = 8) -> bool:
    """Cheap deterministic check: mostly ASCII letters, and (when long enough) enough English stop words."""
    ascii_share, stop_share, n = english_scores(text)
    if ascii_share < min_ascii:
        return False
    return n < min_words or stop_share >= min_stop
