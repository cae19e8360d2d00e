"""The paper's four guardrails for UserLM-8b (Appendix D.1), each switchable.

Token level (logits processors): ban "I", "You", "Here" (with space-prefixed and
lowercase variants) at the first content position, i.e. right after the
leading newline; ban ``<|endconversation|>``.  Turn level (redraw): word count
outside [min_words, max_words]; a verbatim repeat of an earlier user turn or a
copy of the intent.  Every rejected draft is kept with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

from ..text.prompt_format import ChatFormat
from ..data.intents import INTENT_PREFIX as INTENT_SENTENCE
from ..data.text import words
from ..util.errors import UserError
from ..runtime.sampling import LogitsProcessor, ban

FIRST_TOKEN_WORDS = ("I", "You", "Here")


@dataclass(frozen=True)
class Guardrails:
    first_token_ban: bool = False
    end_token_ban: bool = False
    min_words: int | None = None
    max_words: int | None = None
    no_repeat: bool = False
    max_retries: int = 8

    @classmethod
    def none(cls) -> "Guardrails":
        """No guardrails: what intrinsic evaluation uses."""
        return cls()

    @classmethod
    def paper(cls, **overrides) -> "Guardrails":
        """All four, as in the paper's task simulations."""
        base = dict(first_token_ban=True, end_token_ban=True, min_words=3, max_words=25,
                    no_repeat=True, max_retries=8)
        return cls(**{**base, **overrides})

    @classmethod
    def named(cls, name: str) -> "Guardrails":
        if name == "none":
            return cls.none()
        if name == "paper":
            return cls.paper()
        raise UserError(f"unknown guardrails {name!r} (choose none or paper)")

    def __post_init__(self):
        if self.max_retries < 0:
            raise UserError("max_retries must be >= 0")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise UserError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")

    @property
    def redraws(self) -> bool:
        return self.min_words is not None or self.max_words is not None or self.no_repeat


def first_token_ids(fmt: ChatFormat) -> set[int]:
    """Ids of the banned first tokens, looked up in this model's tokenizer."""
    ids = set()
    for word in FIRST_TOKEN_WORDS:
        for form in (word, word.lower()):
            for variant in (form, " " + form):
                enc = fmt.tokenizer.encode(variant)
                if len(enc) == 1:
                    ids.add(enc[0])
    return ids


def processors(g: Guardrails, fmt: ChatFormat) -> list[LogitsProcessor]:
    out: list[LogitsProcessor] = []
    if g.first_token_ban:
        nl = fmt.ids.newline
        # First content position: nothing generated yet, or only the leading newline.
        at_start = lambda turn: len(turn) == 0 or (len(turn) == 1 and turn[0] == nl)  # noqa: E731
        out.append(ban(first_token_ids(fmt), when=at_start))
    if g.end_token_ban and fmt.ids.end_conversation is not None:
        out.append(ban({fmt.ids.end_conversation}))
    return out


def check(g: Guardrails, text: str, intent: str | None, earlier_user_turns: list[str]) -> str | None:
    """The reason to redraw ``text``, or None when it passes."""
    w = words(text)
    if g.min_words is not None and len(w) < g.min_words:
        return f"too_short ({len(w)} < {g.min_words} words)"
    if g.max_words is not None and len(w) > g.max_words:
        return f"too_long ({len(w)} > {g.max_words} words)"
    if g.no_repeat:
        if any(w == words(t) for t in earlier_user_turns):
            return "repeated_user_turn"
        if intent and copies_intent(w, words(intent)):
            return "copied_intent"
    return None


INTENT_PREFIX = words(INTENT_SENTENCE)
COPY_MIN_WORDS = 5


def copies_intent(turn: list[str], intent: list[str]) -> bool:
    """The turn holds the intent's body verbatim, or is a verbatim span of >= 5 of its words."""
    if intent[: len(INTENT_PREFIX)] == INTENT_PREFIX:
        intent = intent[len(INTENT_PREFIX):]
    if not turn or not intent:
        return False
    t, i = f" {' '.join(turn)} ", f" {' '.join(intent)} "
    return i in t or (len(turn) >= COPY_MIN_WORDS and t in i)


@dataclass
class Draft:
    """One sampled user turn, before the guardrails judge it."""

    sampled: list[int]  # the ids sampled after the open user header, the stop token included if any
    text: str  # the turn's text, without its leading newline and stop token
    stop: int | None  # the stop token it ended on (None: cut at the token limit)
    p_end: float | None  # P(<|endconversation|>) at its first content position, when known


@dataclass
class Verdict:
    draft: Draft  # the accepted draft, or the last one when every draft was rejected
    ended: bool  # the user ends the conversation
    reason: str | None  # why the last draft was rejected (None: accepted)
    rejected: list[dict]  # every rejected draft: {"text", "reason"}
    p_end: float | None  # the last P(end) a draft reported


def judge(g: Guardrails, end_conversation: int, d: Draft, intent: str | None, earlier: list[str]) -> tuple[bool, str | None]:
    """(ended, why rejected) of a draft.  An empty turn means the user is done, unless termination
    is banned (then it is rejected as an empty turn)."""
    empty = d.stop is not None and not d.text.strip()
    ended = d.stop == end_conversation or (empty and not g.end_token_ban)
    if ended:
        return True, None
    return False, "empty_turn" if empty else check(g, d.text, intent, earlier)


def redraw(g: Guardrails, end_conversation: int, draft: Callable[[int], Generator], intent: str | None,
           earlier: list[str]) -> Generator:
    """The turn-level guardrails: ``draft(attempt)`` (a coroutine: a local turn's decode steps, or a
    remote one's requests, which yield nothing) until a draft passes or ``g.max_retries`` redraws
    are spent.  Local and remote users share it, so a rule changes in one place."""
    rejected: list[dict] = []
    p_end = None
    for attempt in range(g.max_retries + 1):
        d = yield from draft(attempt)
        p_end = d.p_end if d.p_end is not None else p_end
        ended, reason = judge(g, end_conversation, d, intent, earlier)
        if reason is None:
            break
        rejected.append({"text": d.text, "reason": reason})
    return Verdict(d, ended, reason, rejected, p_end)
