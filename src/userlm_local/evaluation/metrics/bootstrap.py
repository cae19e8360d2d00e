"""Paired bootstrap: the interval of a metric's CAND - REF difference, resampling items
(conversations or intents) with replacement, the same items for both sides."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

Metric = Callable[[Any, np.ndarray], float]


def paired_diffs(fn: Metric, ref: Sequence, cand: Sequence, n_boot: int,
                 rng: np.random.Generator) -> tuple[float, float, np.ndarray]:
    """(metric(REF), metric(CAND), CAND - REF over ``n_boot`` resamples; resamples where the
    metric is undefined are dropped)."""
    n = len(ref)
    if len(cand) != n:
        raise ValueError("paired bootstrap needs the same items on both sides")
    full = np.arange(n)
    value_ref, value_cand = float(fn(ref, full)), float(fn(cand, full))
    if n < 2:
        return value_ref, value_cand, np.zeros(0)
    d = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        d[b] = fn(cand, idx) - fn(ref, idx)
    return value_ref, value_cand, d[np.isfinite(d)]


def interval(diffs: np.ndarray, level: float, n_boot: int) -> tuple[float, float]:
    """The percentile interval at ``level``; NaN when under 90% of the resamples were defined."""
    if n_boot < 1 or len(diffs) < 0.9 * n_boot:
        return float("nan"), float("nan")
    lo, hi = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
