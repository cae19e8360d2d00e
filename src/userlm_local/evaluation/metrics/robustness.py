"""The paper's simulation-robustness metrics as pure functions over texts (spec §3.2 (5), (6)).

Role adherence: after the user's multiple-choice question and the assistant's "I am not sure,
what do you think?", a simulator that names one or two of the choices has answered its own
question (acted as the assistant); naming none, or all, is not an attempt (the paper's one/two-
choice rule).  Intent adherence, lexical judge: after the assistant suggests a diversion, the
reply returns to the question when it shares more of the question's own content words than of
the suggestion's (each as a share of that side's distinct content words)."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .decomposition import content_words

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
END = "<|endconversation|>"


def normalise(text: str) -> str:
    """Lower-cased, every run of non-alphanumerics one space, padded by spaces (word-boundary matching)."""
    return " " + _NON_ALNUM.sub(" ", text.lower()).strip() + " "


ROLE_RULE = ("a reply answers its own question when it names one or two of the choices (the paper's rule); "
             "a reply that restates every choice is read from where its restated list ends, so 'A) ... E) "
             "pharmacy. The answer is D) pharmacy' has answered")


def _named(r: str, choices: Sequence[str]) -> set[str]:
    """The distinct normalised choices found in the normalised text ``r``."""
    return {c for c in map(normalise, choices) if c.strip() and c in r}


def choices_named(reply: str, choices: Sequence[str]) -> int:
    """How many distinct choices the reply names (each choice's words, as a whole, at word boundaries)."""
    return len(_named(normalise(reply), choices))


def answers_own_question(reply: str, choices: Sequence[str]) -> bool:
    """The paper's violation: the reply names one or two of the choices (all of them restates the
    question).  After a restatement of every choice, the rest of the reply is judged on its own:
    restating the list and then picking one is an answer (``ROLE_RULE``)."""
    if reply.strip() == END or not reply.strip():
        return False
    r = normalise(reply)
    named = _named(r, choices)
    if len(named) in (1, 2):
        return True
    every = {c for c in map(normalise, choices) if c.strip()}
    if not every or named != every:
        return False
    listed = max(r.index(c) + len(c) for c in every) - 1  # where the first full list ends (its last space kept)
    return len(_named(r[listed:], choices)) in (1, 2)


def returns_to_question(reply: str, question: str, suggestion: str) -> bool:
    """The lexical judge: the reply shares a larger part of the question's own content words than of
    the suggestion's own (words both share count for neither); a reply that shares neither, or ends
    the conversation, did not return to the question."""
    r, q, s = content_words(reply), content_words(question), content_words(suggestion)
    q_only, s_only = q - s, s - q
    if not r or not q_only:
        return False
    to_q = len(r & q_only) / len(q_only)
    to_s = len(r & s_only) / len(s_only) if s_only else 0.0
    return to_q > to_s


def percent_with_interval(flags: Sequence[bool], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """100 x the share of True, with a 95% percentile bootstrap interval over the items."""
    x = np.asarray(flags, dtype=np.float64)
    if x.size == 0:
        return {"value": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"value": 100.0 * float(x.mean()), "ci95": [100.0 * float(lo), 100.0 * float(hi)], "n": int(x.size)}
