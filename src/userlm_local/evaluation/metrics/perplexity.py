"""Perplexity of target tokens, micro-averaged: exp(-sum of logprobs / number of tokens)."""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def perplexity(logprobs: Iterable[Sequence[float]]) -> float:
    """Micro-average perplexity over all tokens of all samples (each sample: its target logprobs)."""
    total, n = 0.0, 0
    for sample in logprobs:
        for lp in sample:
            total += float(lp)
            n += 1
    if n == 0:
        raise ValueError("perplexity of zero tokens")
    return math.exp(-total / n)
