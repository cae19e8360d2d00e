"""Many conversations, one engine: their decode steps share engine calls.

Kept out of the single-stream path: ``SimulatedUser.next_turn`` drives one turn
coroutine on one session; here a scheduler thread drives every pending turn
coroutine together, and each round hands all their pending ids to one
``backend.extend_many`` call (one ``llama_decode`` batch on llama.cpp; plain
sequential extends on backends without it).  Conversations join and leave
between rounds (continuous batching), so a conversation waiting on its
assistant does not hold the others up.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import numpy as np

from .backends.base import Backend, Session
from .simulator import SimulatedUser, Turn


def extend_many(backend: Backend, work: list[tuple[Session, list[int]]]) -> list[np.ndarray]:
    batched = getattr(backend, "extend_many", None)
    if batched is not None:
        return batched(work)
    return [session.extend(ids) for session, ids in work]


class TurnScheduler:
    """``next_turn(user)`` from any thread; a single scheduler thread owns the engine."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.inbox: queue.Queue = queue.Queue()
        self.rounds = 0
        self.max_batch = 0
        self._thread = threading.Thread(target=self._loop, name="userlm-turns", daemon=True)
        self._stop = False
        self._thread.start()

    def next_turn(self, user: SimulatedUser) -> Turn:
        fut: Future = Future()
        self.inbox.put((user, fut))
        return fut.result()

    def close(self) -> None:
        self._stop = True
        self.inbox.put(None)
        self._thread.join(timeout=10)

    def _admit(self, active: dict, item) -> None:
        user, fut = item
        try:
            steps = user.turn_steps()
            active[id(steps)] = (steps, user.session, fut, next(steps))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            fut.set_exception(exc)

    def _loop(self) -> None:
        active: dict = {}
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
            keys = list(active)
            work = [(active[k][1], active[k][3]) for k in keys]
            try:
                outs = extend_many(self.backend, work)
            except BaseException as exc:  # noqa: BLE001
                for k in keys:
                    active.pop(k)[2].set_exception(exc)
                continue
            self.rounds += 1
            self.max_batch = max(self.max_batch, len(keys))
            for k, logits in zip(keys, outs):
                steps, session, fut, _ = active[k]
                try:
                    active[k] = (steps, session, fut, steps.send(logits))
                except StopIteration as done:
                    del active[k]
                    fut.set_result(done.value)
                except BaseException as exc:  # noqa: BLE001
                    del active[k]
                    fut.set_exception(exc)
