"""Three-way verdicts from paired bootstrap differences: equivalence testing.

A metric with tolerance ``m`` is *preserved* when the 90% interval of CAND - REF lies inside
(-m, m) (two one-sided tests at 5%), *degraded* when the interval lies wholly outside [-m, m]
(a one-sided test at 5%, Holm-corrected across the metrics), and *inconclusive* otherwise:
too few items to tell.  An interval that merely includes 0 proves nothing, so it decides nothing.

Intervals are bias-corrected and accelerated (BCa: Efron 1987), the acceleration from a
jackknife over the items; a degenerate bootstrap (every resample equal, two identical models)
gives the point interval."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable

import numpy as np

ALPHA = 0.05  # each one-sided test
POWER = 0.80  # for n_needed: the sample that decides a metric 4 times in 5 at the observed spread
# Under this many items a bootstrap has too few distinct resamples to trust its tails (3 items:
# 10 of them) and under-states the spread: nothing is decided, either way.
MIN_ITEMS = 10
_N = NormalDist()
_EPS = 1e-12

PRESERVED, DEGRADED, INCONCLUSIVE = "preserved", "degraded", "inconclusive"
RULE = ("a metric is preserved when the 90% interval of the difference (CAND - REF) lies inside its tolerance, "
        "degraded when it lies wholly outside (corrected for testing many metrics), and inconclusive when it "
        "straddles the tolerance: more conversations are needed, and the report says about how many")


def jackknife(fn: Callable, ref, cand) -> np.ndarray:
    """fn(CAND) - fn(REF) with each item left out in turn (NaN where the metric is undefined)."""
    n = len(ref)
    out = np.empty(n, dtype=np.float64)
    every = np.arange(n)
    for i in range(n):
        idx = np.delete(every, i)
        out[i] = float(fn(cand, idx)) - float(fn(ref, idx))
    return out


@dataclass
class Bootstrap:
    """A bootstrap distribution of a statistic with its BCa corrections."""

    observed: float
    diffs: np.ndarray  # the resampled statistic (finite values only)
    z0: float  # bias correction
    a: float  # acceleration

    @classmethod
    def of(cls, observed: float, diffs: np.ndarray, jack: np.ndarray) -> "Bootstrap":
        diffs = np.sort(diffs[np.isfinite(diffs)])
        if diffs.size == 0 or diffs[0] == diffs[-1]:
            return cls(observed, diffs, 0.0, 0.0)
        below = (np.sum(diffs < observed) + 0.5 * np.sum(diffs == observed)) / diffs.size
        z0 = _N.inv_cdf(min(max(below, 1e-6), 1 - 1e-6))
        j = jack[np.isfinite(jack)]
        dev = j.mean() - j if j.size else np.zeros(0)
        den = 6.0 * float(np.sum(dev ** 2)) ** 1.5
        a = float(np.sum(dev ** 3)) / den if den > 0 else 0.0
        return cls(observed, diffs, z0, a)

    @property
    def degenerate(self) -> bool:
        return self.diffs.size == 0 or self.diffs[0] == self.diffs[-1]

    def quantile(self, p: float) -> float:
        """The BCa-adjusted ``p`` quantile (a one-sided confidence bound at level p)."""
        if self.diffs.size == 0:
            return float("nan")
        if self.degenerate:
            return float(self.diffs[0])
        z = _N.inv_cdf(p)
        w = self.z0 + z
        adj = _N.cdf(self.z0 + w / (1 - self.a * w)) if 1 - self.a * w > 0 else (1.0 if w > 0 else 0.0)
        return float(np.quantile(self.diffs, min(max(adj, 0.0), 1.0)))

    def interval(self, level: float) -> tuple[float, float]:
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def cdf(self, x: float) -> float:
        """The level p at which ``quantile(p) == x``: the one-sided p-value of "the difference > x"."""
        if self.diffs.size == 0:
            return float("nan")
        if self.degenerate:
            return 0.0 if self.diffs[0] > x else 1.0
        frac = (np.searchsorted(self.diffs, x, side="right")) / self.diffs.size
        b = _N.inv_cdf(min(max(frac, _EPS), 1 - _EPS))
        # invert adj = Phi(z0 + w / (1 - a w)), w = z0 + z, for z
        u = b - self.z0
        if 1 + self.a * u <= 0:  # below every level the BCa quantile reaches (strong skew): level 0
            return 0.0
        w = u / (1 + self.a * u)
        return _N.cdf(w - self.z0)

    def sd(self) -> float:
        return float(self.diffs.std(ddof=1)) if self.diffs.size > 1 else 0.0


def p_outside(b: Bootstrap, m: float) -> float:
    """One-sided p-value that the difference lies outside [-m, m] (on the side it leans to)."""
    if b.diffs.size == 0:
        return float("nan")
    return min(b.cdf(m), 1.0 - b.cdf(-m))


def holm(pvalues: dict[str, float], alpha: float = ALPHA) -> set[str]:
    """The names whose hypotheses Holm's step-down procedure rejects at family-wise ``alpha``."""
    ranked = sorted((p, k) for k, p in pvalues.items() if math.isfinite(p))
    out, m = set(), len(ranked)
    for i, (p, k) in enumerate(ranked):
        if p > alpha / (m - i):
            break
        out.add(k)
    return out


def n_needed(b: Bootstrap, m: float, n: int, k: int, alpha: float = ALPHA) -> int | None:
    """Items that would decide the metric with 80% power if the observed difference and the
    per-item spread held (None: the difference sits on the tolerance, no sample decides it)."""
    d = abs(b.observed)
    if not (math.isfinite(d) and math.isfinite(m)) or b.diffs.size < 2:
        return None
    spread = b.sd() * math.sqrt(n)  # per-item standard deviation of the difference
    if d < m:
        z = _N.inv_cdf(1 - alpha) + _N.inv_cdf(POWER)
        gap = m - d
    elif d > m:
        z = _N.inv_cdf(1 - alpha / max(k, 1)) + _N.inv_cdf(POWER)
        gap = d - m
    else:
        return None
    if spread == 0:
        return max(n, MIN_ITEMS)
    return max(MIN_ITEMS, math.ceil((z * spread / gap) ** 2))


def decide(boots: dict[str, Bootstrap], tolerances: dict[str, float], n_items: dict[str, int],
           alpha: float = ALPHA) -> dict[str, dict]:
    """{metric: {verdict, verdict_interval, p_degraded, n_needed}} for the metrics with a tolerance;
    ``alpha`` each one-sided test (smaller when the data is looked at more than once)."""
    pv = {k: p_outside(b, tolerances[k]) for k, b in boots.items()}
    degraded = holm(pv, alpha)
    out = {}
    for k, b in boots.items():
        m = tolerances[k]
        lo, hi = b.interval(1 - 2 * alpha)
        if not (math.isfinite(lo) and math.isfinite(hi)) or (n_items[k] < MIN_ITEMS and not b.degenerate):
            v = INCONCLUSIVE
        elif -m < lo and hi < m:
            v = PRESERVED
        elif k in degraded and (lo > m or hi < -m):  # the test and the interval agree (discrete metrics)
            v = DEGRADED
        else:
            v = INCONCLUSIVE
        out[k] = {"verdict": v, "verdict_interval": [lo, hi], "p_degraded": pv[k],
                  "n_needed": None if v != INCONCLUSIVE else n_needed(b, m, n_items[k], len(boots), alpha)}
    return out


def combine(verdicts: list[str]) -> str:
    """A candidate's verdict from its parts: degraded if any is, preserved if all are."""
    if DEGRADED in verdicts:
        return DEGRADED
    return PRESERVED if verdicts and all(v == PRESERVED for v in verdicts) else INCONCLUSIVE
