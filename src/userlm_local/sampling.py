"""Samplers and logits processors as plain callables, and the sampling presets.

A ``LogitsProcessor`` is ``(turn_ids, logits) -> logits`` where ``turn_ids`` are
the ids generated so far in this turn.  A ``Sampler`` is ``(logits, rng) -> id``.
Every conversation owns its own ``numpy.random.Generator`` (see ``rng_for``), so
its draws do not depend on what else runs beside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import UserError

LogitsProcessor = Callable[[list[int], np.ndarray], np.ndarray]
Sampler = Callable[[np.ndarray, np.random.Generator], int]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # 0 = off

    def __post_init__(self):
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")


PRESETS = {
    # the model card snippet and the paper's simulations
    "paper": SamplingParams(temperature=1.0, top_p=0.8),
    # UserLM-8b's generation_config.json
    "generation-config": SamplingParams(temperature=0.6, top_p=0.9),
    "greedy": SamplingParams(temperature=0.0),
}


def preset(name: str) -> SamplingParams:
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown sampling preset {name!r} (choose from {', '.join(PRESETS)})") from None


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """An RNG stream derived from ``seed`` and ``keys`` (e.g. intent id, trial)."""
    digest = hashlib.sha256(repr((int(seed), *map(str, keys))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def _nucleus(probs: np.ndarray, top_p: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids (most probable first) and their probabilities after top-k / top-p."""
    n = probs.size
    k = n if top_k <= 0 else min(top_k, n)
    # Sort only a partition when it provably holds the whole nucleus; else sort everything.
    m = min(k, 256)
    if m < n:
        part = np.argpartition(-probs, m - 1)[:m]
        order = part[np.argsort(-probs[part], kind="stable")]
        if m < k and probs[order].sum() < top_p:
            order = np.argsort(-probs, kind="stable")[:k]
    else:
        order = np.argsort(-probs, kind="stable")[:k]
    p = probs[order]
    if top_p < 1.0:
        cut = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        order, p = order[:cut], p[:cut]
    return order, p


def make_sampler(params: SamplingParams) -> Sampler:
    if params.temperature == 0:
        return lambda logits, rng: int(np.argmax(logits))

    def sample(logits: np.ndarray, rng: np.random.Generator) -> int:
        probs = softmax(logits / params.temperature)
        if params.min_p > 0:
            probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
        ids, p = _nucleus(probs, params.top_p, params.top_k)
        cdf = np.cumsum(p)
        i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.size - 1)])

    return sample


def ban(ids: set[int] | frozenset[int], when: Callable[[list[int]], bool] | None = None) -> LogitsProcessor:
    """A processor that sets the logits of ``ids`` to -inf (only where ``when(turn_ids)`` holds)."""
    idx = np.fromiter(sorted(ids), dtype=np.int64)

    def process(turn_ids: list[int], logits: np.ndarray) -> np.ndarray:
        if idx.size == 0 or (when is not None and not when(turn_ids)):
            return logits
        out = logits.copy()
        out[idx[idx < out.size]] = -np.inf
        return out

    return process
