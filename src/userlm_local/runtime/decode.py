"""The one decode loop (``decode_steps``), used by the user turn and the assistant reply alike,
and the one place that brings a session in line with a token list (``sync_session``).

``decode_steps`` is a coroutine: it yields ``[token]`` whenever it needs the logits after
``token``, and returns the sampled ids (a stop id last, never decoded).  ``drive`` runs it on
one session; ``drive_rounds`` runs many coroutines on this thread in rounds, each round's steps
sharing one call per engine (``drive_many``: a list of them, each on a new session of one
engine), in batches that repeat run to run; ``scheduler.Scheduler`` batches work that callers on
many threads submit whenever they do.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generator, Iterable, TypeVar

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


@dataclass(frozen=True)
class Step:
    """One engine step of a coroutine that may use several engines (a conversation: its user
    model's session, then its assistant's): feed ``ids`` to ``session`` of ``backend``."""

    backend: Backend
    session: Session
    ids: list[int]


EngineSteps = Generator[Step, np.ndarray, T]


def on_engine(backend: Backend, session: Session, steps: Steps[T]) -> EngineSteps[T]:
    """A one-session step coroutine (it yields ids) as one that names its engine and session,
    for ``drive_rounds``.  A step the driver could not run is thrown in at its ``yield``."""
    try:
        ids = next(steps)
        while True:
            try:
                logits = yield Step(backend, session, ids)
            except GeneratorExit:
                raise
            except Exception as exc:  # noqa: BLE001 - the step's own failure, raised where it waited
                ids = steps.throw(exc)
            else:
                ids = steps.send(logits)
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


def drive_rounds(jobs: Iterable[Callable[[], EngineSteps[T]]], *, concurrency: int,
                 on_done: Callable[[int, T], None] | None = None) -> dict:
    """Run ``job()`` coroutines, up to ``concurrency`` at once, on this thread, in rounds: each
    round, every one of them waits on one ``Step``, and each engine gets its round's steps in one
    ``extend_many`` call (on llama.cpp one batch), the engines' calls side by side.  Jobs join in
    order as others finish, between rounds, so the same jobs and ``concurrency`` make the same
    batches every run: what is drawn is reproducible (a shared batch changes llama.cpp's sums, so
    the batches must repeat too; the threaded ``Scheduler`` admits work whenever its callers
    submit it).  ``jobs`` is read lazily (a caller can stop feeding it).  A step its session
    refuses (context full) is thrown into its coroutine alone; one that raises stops the rest at
    once (closed, without their results).  ``on_done(k, result)`` for the k-th job; returns
    ``{"rounds", "max_batch"}``."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    todo = iter(jobs)
    active: dict[int, tuple[EngineSteps[T], Step]] = {}  # admission order: a round's batch order
    admitted = rounds = max_batch = 0
    pool = None  # a second engine's calls, beside the first's

    def advance(k: int, coro: EngineSteps[T], send=None, throw: BaseException | None = None) -> None:
        try:
            step = coro.throw(throw) if throw is not None else coro.send(send)
        except StopIteration as done:
            active.pop(k, None)
            if on_done is not None:
                on_done(k, done.value)
        else:
            active[k] = (coro, step)

    try:
        while True:
            while len(active) < concurrency and (job := next(todo, None)) is not None:
                admitted += 1
                coro = job()
                active[admitted - 1] = (coro, None)
                advance(admitted - 1, coro)
            if not active:
                break
            engines: dict[int, list[int]] = {}  # each engine's waiting jobs, in admission order
            for k, (coro, step) in list(active.items()):
                try:
                    step.session.check_extend(step.ids)
                except Exception as exc:  # noqa: BLE001 - that job's own failure
                    advance(k, coro, throw=exc)  # its next step waits for the next round
                else:
                    engines.setdefault(id(step.backend), []).append(k)
            batches = [(keys, [active[k][1] for k in keys]) for keys in engines.values()]
            if len(batches) > 1 and pool is None:
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="userlm-round")
            # every engine of the round at once (a conversation's two sides are different engines;
            # each one's batch is fixed above, so running them side by side changes no sum)
            later = [pool.submit(_extend, steps) for _, steps in batches[1:]]
            outs = [_extend(batches[0][1])] if batches else []
            outs += [f.result() for f in later]
            rounds, max_batch = rounds + len(batches), max([max_batch] + [len(keys) for keys, _ in batches])
            # only once every engine is done: a job's next step may trim or close a session of
            # another engine (a reply done, the user's turn begins), never while that one decodes
            for (keys, _), logits in zip(batches, outs):
                for k, row in zip(keys, logits):
                    advance(k, active[k][0], send=row)
    finally:
        _wind_down(pool, [coro for coro, _ in active.values()])
    return {"rounds": rounds, "max_batch": max_batch}


def _wind_down(pool: ThreadPoolExecutor | None, coros: list) -> None:
    """After the rounds, or on the way out of a failure: an engine still decoding finishes before
    any session is closed (a Ctrl-C while waiting for it is held until it has), then every coroutine
    is closed (its sessions with it), each whatever the others do; the first error is raised."""
    held = None
    while pool is not None:
        try:
            pool.shutdown(wait=True)
            break
        except KeyboardInterrupt as exc:
            held = exc
    first = held
    for coro in coros:
        try:
            coro.close()
        except BaseException as exc:  # noqa: BLE001 - the others are still closed
            first = first or exc
    if first is not None:
        raise first


def _extend(steps: list[Step]) -> list[np.ndarray]:
    return steps[0].backend.extend_many([(s.session, s.ids) for s in steps])


def drive_many(backend: Backend, jobs: list[Callable[[Session], Steps[T]]], *, concurrency: int,
               on_done: Callable[[int, T], None] | None = None) -> list[T]:
    """Each ``jobs[k](session)`` coroutine on a new session of its own (the job closes it), up to
    ``concurrency`` at once, every round's pending ids in one ``backend.extend_many`` call
    (``drive_rounds``: reproducible batches).  ``on_done(k, result)`` as each finishes; a job
    that raises stops the rest (closed, their sessions with them)."""
    out: list = [None] * len(jobs)

    def job(k: int) -> Callable[[], EngineSteps[T]]:
        def run() -> EngineSteps[T]:
            session = backend.new_session()
            return (yield from on_engine(backend, session, jobs[k](session)))
        return run

    def finished(k: int, value) -> None:
        out[k] = value
        if on_done is not None:
            on_done(k, value)

    drive_rounds([job(k) for k in range(len(jobs))], concurrency=concurrency, on_done=finished)
    return out


def at_once(fn: Callable[..., T]) -> Callable[..., Generator[Step, np.ndarray, T]]:
    """``fn`` as a step coroutine that takes no step (answers at once): for code written over
    coroutines (``converse_steps``) called where the work is a plain call."""
    def steps(*args, **kwargs):
        return fn(*args, **kwargs)
        yield  # unreachable: makes this a generator

    return steps


def run_now(steps: Generator) -> T:
    """The value of a coroutine that takes no step (every part of it ``at_once``)."""
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    steps.close()
    raise RuntimeError("a step coroutine took an engine step where none was expected")


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
