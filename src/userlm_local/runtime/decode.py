"""The one decode loop (``decode_steps``), used by the user turn and the assistant reply alike,
and the one place that brings a session in line with a token list (``sync_session``).

``decode_steps`` is a coroutine: it yields ``[token]`` whenever it needs the logits after
``token``, and returns the sampled ids (a stop id last, never decoded).  ``drive`` runs it on
one session; ``drive_many`` runs a fixed list of them on this thread, their steps sharing one
engine call per round; ``scheduler.Scheduler`` does so for callers on many threads.
"""

from __future__ import annotations

from typing import Callable, Generator, TypeVar

import numpy as np

from .backends.base import Backend, Session
from .sampling import LogitsProcessor, Noise, Sampler, softmax

T = TypeVar("T")
Steps = Generator[list[int], np.ndarray, T]


def decode_steps(logits: np.ndarray, *, sampler: Sampler, noise: Noise | None = None,
                 rng: np.random.Generator | None = None, first_position: int = 0,
                 processors: list[LogitsProcessor] = (), stop_ids: frozenset[int] = frozenset(),
                 max_tokens: int = 256,
                 watch: Callable[[list[int], np.ndarray], None] | None = None,
                 on_token: Callable[[int, np.ndarray], bool] | None = None) -> Steps[list[int]]:
    """Sample until a stop id or ``max_tokens`` from ``logits`` (the session's last position).

    The k-th sampled id (from 0) is drawn with ``noise.key(first_position + k)``: keyed by its
    place, not by what was drawn before, so the same noise on a slightly different model draws
    the same ids for as long as it can (coupled).  ``rng`` instead (a seeded stream, one key
    drawn from it per token) is for callers that need no coupling.

    ``watch(turn_so_far, raw_logits)`` sees the unprocessed logits before each draw (the user
    turn reads P(end) there); ``on_token(token, raw_logits)`` sees each sampled id as it is
    drawn (a server streams it) and ends the turn by returning True (a stop string, a client
    gone)."""
    if (noise is None) == (rng is None):
        raise TypeError("decode_steps takes one of noise= (keyed draws) and rng= (a seeded stream)")
    turn: list[int] = []
    while True:
        if watch is not None:
            watch(turn, logits)
        processed = logits
        for process in processors:
            processed = process(turn, processed)
        token = sampler(processed, rng if noise is None else noise.key(first_position + len(turn)))
        turn.append(token)
        if on_token is not None and on_token(token, logits):
            return turn
        if token in stop_ids or len(turn) >= max_tokens:
            return turn
        logits = yield [token]


def drive(steps: Steps[T], session: Session) -> T:
    """Run a step coroutine to its end on a single session."""
    try:
        ids = next(steps)
        while True:
            ids = steps.send(session.extend(ids))
    except StopIteration as done:
        return done.value


def drive_many(backend: Backend, jobs: list[Callable[[Session], Steps[T]]], *, concurrency: int,
               on_done: Callable[[int, T], None] | None = None) -> list[T]:
    """Each ``jobs[k](session)`` coroutine on a new session of its own (the job closes it), up to
    ``concurrency`` at once, every round's pending ids in one ``backend.extend_many`` call.
    Jobs join in order as others finish, between rounds, on this thread: the same jobs and
    ``concurrency`` make the same batches every run, so what is drawn is reproducible (the
    threaded ``Scheduler`` admits work whenever its callers submit it).  ``on_done(k, result)``
    as each finishes; a job that raises stops the rest (closed, their sessions with them)."""
    out: list = [None] * len(jobs)
    todo = list(range(len(jobs)))[::-1]
    active: dict[int, tuple[Steps[T], Session, list[int]]] = {}

    def finished(k: int, value) -> None:
        out[k] = value
        if on_done is not None:
            on_done(k, value)

    try:
        while todo or active:
            while todo and len(active) < concurrency:
                k = todo.pop()
                session = backend.new_session()
                steps = jobs[k](session)
                try:
                    active[k] = (steps, session, next(steps))
                except StopIteration as done:
                    finished(k, done.value)
            keys = list(active)
            outs = backend.extend_many([(active[k][1], active[k][2]) for k in keys]) if keys else []
            for k, logits in zip(keys, outs):
                steps, session, _ = active[k]
                try:
                    active[k] = (steps, session, steps.send(logits))
                except StopIteration as done:
                    del active[k]
                    finished(k, done.value)
    finally:
        for steps, _, _ in active.values():
            steps.close()
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def sync_session(session: Session, target: list[int]) -> tuple[list[int], int]:
    """Trim ``session`` to its common prefix with ``target``; (the ids it still lacks, the ids it
    kept).  At least one id is left to decode, so the last position's logits come back."""
    keep = common_prefix(session.tokens, target)
    if keep == len(target):
        keep -= 1
    session.trim(len(session.tokens) - keep)
    return target[keep:], keep


def prob_of(logits: np.ndarray, token: int | None) -> float | None:
    """The model's probability of ``token`` (temperature 1, no processors)."""
    if token is None:
        return None
    if not isinstance(logits, np.ndarray):  # a torch tensor on its device
        import torch

        return float(torch.softmax(logits.float(), dim=-1)[token].item()) if token < logits.numel() else None
    if token >= logits.size:
        return None
    return float(softmax(logits)[token])
