"""``generate_step``: one user turn, token by token, over a backend session."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .backends.base import Session
from .sampling import LogitsProcessor, Sampler, softmax


def generate_step(
    session: Session,
    logits: np.ndarray,
    *,
    sampler: Sampler,
    rng: np.random.Generator,
    processors: list[LogitsProcessor] = (),
    stop_ids: frozenset[int] = frozenset(),
    max_tokens: int = 256,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(token, raw_logits)``: each sampled id and the unprocessed logits it was drawn from.

    ``logits`` are those of the session's last position (the turn start).  A
    sampled id is fed back to the session only when another token is needed, so
    a stop id is yielded but never decoded.
    """
    turn: list[int] = []
    for _ in range(max_tokens):
        processed = logits
        for process in processors:
            processed = process(turn, processed)
        token = sampler(processed, rng)
        yield token, logits
        turn.append(token)
        if token in stop_ids or len(turn) == max_tokens:
            return
        logits = session.extend([token])


def prob_of(logits: np.ndarray, token: int | None) -> float | None:
    """The model's probability of ``token`` (temperature 1, no processors)."""
    if token is None or token >= logits.size:
        return None
    return float(softmax(logits)[token])
