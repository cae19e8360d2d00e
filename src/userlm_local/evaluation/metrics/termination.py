"""Dialogue termination as binary classification of "the user ends here" (paper §3.2 (3))."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _arrays(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-D and the same length")
    return s, y


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve via the rank statistic (Mann–Whitney U, ties get average ranks)."""
    s, y = _arrays(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties (1-based)
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_at(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> float:
    """F1 of the positive ("end") class when predicting positive iff score >= threshold."""
    s, y = _arrays(scores, labels)
    pred = s >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def best_f1(scores: Sequence[float], labels: Sequence[bool]) -> tuple[float, float]:
    """(best F1, its threshold) over thresholds at every distinct score; ties pick the highest threshold."""
    s, y = _arrays(scores, labels)
    n_pos = int(y.sum())
    if len(s) == 0 or n_pos == 0:
        return 0.0, float("nan")
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    last = np.r_[ss[1:] != ss[:-1], True]  # predicting positive for every score >= ss[k]
    f1 = 2.0 * tp[last] / (tp[last] + fp[last] + n_pos)
    k = int(np.argmax(f1))
    return float(f1[k]), float(ss[last][k])
