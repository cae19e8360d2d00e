"""First-turn diversity: 100 × (1 − mean pairwise unigram Jaccard), paper §3.2 (1)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from ...data.text import words


def unigram_set(text: str) -> frozenset[str]:
    """Lower-cased word unigrams (``[a-z0-9]+(?:['’-][a-z0-9]+)?``)."""
    return frozenset(words(text))


def jaccard_matrix(texts: Sequence[str]) -> np.ndarray:
    """Pairwise unigram Jaccard similarities (n x n).  Two utterances with no words at all
    count as identical (Jaccard 1).  Intersections are one matrix product over the words
    shared by at least two utterances."""
    sets = [unigram_set(t) for t in texts]
    n = len(sets)
    df = Counter(w for s in sets for w in s)
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c > 1))}
    m = np.zeros((n, max(len(vocab), 1)), dtype=np.float32)
    for i, s in enumerate(sets):
        cols = [vocab[w] for w in s if w in vocab]
        m[i, cols] = 1.0
    inter = (m @ m.T).astype(np.float64)
    size = np.array([len(s) for s in sets], dtype=np.float64)
    union = size[:, None] + size[None, :] - inter
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def first_turn_diversity(texts: Sequence[str]) -> float:
    """100 × (1 − mean over pairs i<j of |U_i ∩ U_j| / |U_i ∪ U_j|)."""
    n = len(texts)
    if n < 2:
        raise ValueError("diversity needs at least two utterances")
    jac = jaccard_matrix(texts)
    iu = np.triu_indices(n, k=1)
    return float(100.0 * (1.0 - jac[iu].mean()))
