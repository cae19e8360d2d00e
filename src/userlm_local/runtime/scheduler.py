"""Many conversations, one engine: their decode steps share engine calls.

Kept out of the single-stream path: ``generate.drive`` runs one step coroutine on one
session; here a scheduler thread per engine drives every pending coroutine together (user
turns and assistant replies alike: anything written over ``generate.decode_steps``), and each
round hands all their pending ids to one ``backend.extend_many`` call (one ``llama_decode``
batch on llama.cpp; plain sequential extends on backends without it, so results there do not
depend on what runs beside them).  Conversations join and leave between rounds (continuous
batching), so a conversation waiting on the other side does not hold the others up.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Callable, TypeVar


from .backends.base import Backend, Session
from .decode import Steps

T = TypeVar("T")


def _resolve(fut: Future, value) -> None:
    """Hand ``value`` to the waiting thread, unless it gave up (a cancelled future: a client
    that went away while its generation ran to its end)."""
    with contextlib.suppress(InvalidStateError):
        fut.set_result(value)


def _fail(fut: Future, exc: BaseException) -> None:
    with contextlib.suppress(InvalidStateError):
        fut.set_exception(exc)


class Scheduler:
    """``run(steps, session)`` from any thread; a single scheduler thread owns the engine."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.inbox: queue.Queue = queue.Queue()
        self.rounds = 0
        self.max_batch = 0
        self._thread = threading.Thread(target=self._run, name="userlm-engine", daemon=True)
        self._stop = False
        self._closing = threading.Lock()  # orders ``submit`` against ``close``
        self._active: dict = {}
        self._thread.start()

    def submit(self, make_steps: Callable[..., Steps[T]], session: Session | Callable[[], Session] | None) -> Future:
        """A future of the coroutine ``make_steps()``'s result: built and run on the scheduler
        thread, its decode steps batched with everything else in flight on this engine.
        ``session`` may be a factory (``backend.new_session``): then it is opened on the
        scheduler thread and the coroutine is ``make_steps(session)``.  Cancelling the future
        drops the coroutine before its next step."""
        fut: Future = Future()
        with self._closing:
            if self._stop:
                fut.set_exception(RuntimeError("the engine is closed"))
            else:
                self.inbox.put((make_steps, session, fut))
        return fut

    def run(self, make_steps: Callable[[], Steps[T]], session: Session) -> T:
        return self.submit(make_steps, session).result()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the scheduler thread, between rounds (closing a session while the engine
        decodes others is not safe on every backend)."""
        def steps():
            return fn()
            yield  # unreachable: makes this a generator

        return self.run(steps, None)

    def next_turn(self, user):
        """A simulated user's next turn (``SimulatedUser.turn_steps`` on its session)."""
        return self.run(user.turn_steps, user.session)

    def close(self) -> None:
        """Stop the engine thread; whatever still waits on it fails ("the engine is closed")."""
        with self._closing:
            self._stop = True
            self.inbox.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # nothing may wait forever on a closed (or failed) engine
            with self._closing:
                self._stop = True
            closed = RuntimeError("the engine is closed")
            for steps, _, fut, _ in self._active.values():
                with contextlib.suppress(Exception):
                    steps.close()
                _fail(fut, closed)
            self._active.clear()
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    _fail(item[2], closed)

    def _admit(self, active: dict, item) -> None:
        make_steps, session, fut = item
        if fut.cancelled():
            return
        try:
            if callable(session):
                session = session()
                steps = make_steps(session)
            else:
                steps = make_steps()
            active[id(steps)] = (steps, session, fut, next(steps))
        except StopIteration as done:  # finished without a step (``call``)
            _resolve(fut, done.value)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            _fail(fut, exc)

    @staticmethod
    def _drop_failing(active: dict) -> None:
        """Before a shared round: a caller that gave up (its future cancelled) leaves, and a
        step its session refuses (context full) fails alone instead of failing the batch."""
        for k in list(active):
            steps, session, fut, ids = active[k]
            if fut.cancelled():
                steps.close()
                del active[k]
                continue
            try:
                session.check_extend(ids)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                steps.close()
                del active[k]
                _fail(fut, exc)

    def _loop(self) -> None:
        active = self._active
        while not self._stop:
            if not active:
                item = self.inbox.get()
                if item is None:
                    return
                self._admit(active, item)
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                self._admit(active, item)
            self._drop_failing(active)
            if not active:
                continue
            keys = list(active)
            work = [(active[k][1], active[k][3]) for k in keys]
            try:
                outs = self.backend.extend_many(work)
            except BaseException as exc:  # noqa: BLE001
                for k in keys:
                    _fail(active.pop(k)[2], exc)
                continue
            self.rounds += 1
            self.max_batch = max(self.max_batch, len(keys))
            for k, logits in zip(keys, outs):
                steps, session, fut, _ = active[k]
                try:
                    active[k] = (steps, session, fut, steps.send(logits))
                except StopIteration as done:
                    del active[k]
                    _resolve(fut, done.value)
                except BaseException as exc:  # noqa: BLE001
                    del active[k]
                    _fail(fut, exc)
