"""The paper's Table 3 properties of simulated users on tasks, without a judge (lexical proxies).

* **turn variance / turn range**: of the number of user turns across simulations of one task;
* **unigram difference**: 100 x (1 - unigram Jaccard) between the user sides of two simulations of
  one task, averaged over their pairs;
* **intent coverage**: the share of the problem's information units (its sentences and its
  examples) that the user's turns reveal, a unit counting as revealed when at least half of its
  content words (stop words removed) appear in the user's turns.  A lexical proxy for the judge's
  reading: a paraphrase reveals a unit without its words.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Sequence

import numpy as np

from .decomposition import content_words
from .diversity import jaccard_matrix

REVEALED = 0.5  # share of a unit's content words the user's turns must hold
EXAMPLE = re.compile(r">>>|==|=>|->|➞|→")
HEADER = re.compile(r"(\S+\s*){1,3}:")  # "Examples:", "For example:", "Note:"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`])")


def _docstrings(problem: str) -> str | None:
    """The docstrings of a Python problem (HumanEval's prompt), or None when it is not Python."""
    try:
        tree = ast.parse(problem)
    except (SyntaxError, ValueError):
        return None
    docs = [inspect.cleandoc(n.value.value) for n in ast.walk(tree)  # docstrings, and strings after an import
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
    return "\n\n".join(d for d in docs if d)


def info_units(problem: str) -> list[str]:
    """The problem's sentences and examples: an example is a line with ``>>>`` (with the output
    lines after it) or an ``==`` / ``=>`` / ``->`` / ``➞`` line; the rest is split into sentences.
    For a Python problem, the text is its docstrings.  Units without content words are dropped."""
    text = _docstrings(problem)
    text = problem if text is None else text
    units, prose, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(">>>"):
            example = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].strip().startswith(">>>") \
                    and not lines[i + 1].rstrip().endswith(":"):  # its output, up to a blank line or a heading
                i += 1
                example.append(lines[i].strip())
            units.append(" ".join(example))
        elif EXAMPLE.search(line):
            units.append(line)
        else:
            prose.append(line)
        i += 1
    for para in re.split(r"\n\s*\n", "\n".join(prose)):
        units += [s.strip() for s in SENTENCE_END.split(" ".join(para.split())) if s.strip()]
    return [u for u in units if content_words(u) and not HEADER.fullmatch(u)]


def revealed(unit: str, said: set[str]) -> bool:
    words = content_words(unit)
    return bool(words) and len(words & said) / len(words) >= REVEALED


def intent_coverage(problem: str, user_turns: Sequence[str]) -> float | None:
    """The share of ``info_units(problem)`` the user's turns reveal (None: a problem without units)."""
    units = info_units(problem)
    if not units:
        return None
    said = set().union(*(content_words(t) for t in user_turns)) if user_turns else set()
    return sum(revealed(u, said) for u in units) / len(units)


def turn_spread(turns: Sequence[int]) -> tuple[float, int] | None:
    """(variance, range) of the user-turn counts of one task's simulations; None under two."""
    if len(turns) < 2:
        return None
    t = np.asarray(turns, dtype=np.float64)
    return float(t.var(ddof=1)), int(t.max() - t.min())


def unigram_difference(user_sides: Sequence[str]) -> float | None:
    """100 x mean over pairs of (1 - unigram Jaccard) of one task's simulations (each the user's
    turns joined); None under two."""
    n = len(user_sides)
    if n < 2:
        return None
    jac = jaccard_matrix(list(user_sides))
    iu = np.triu_indices(n, k=1)
    return float(100.0 * (1.0 - jac[iu].mean()))
