"""The scheduler's failure paths, on the bundled tiny UserLM (torch, CPU): a cancelled caller,
a session whose context is full, a closed engine and a failing engine call each fail only the
work they concern, and every wait is bounded so a regression fails instead of hanging."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

pytest.importorskip("torch")

from userlm_local.defaults import tiny_user_model  # noqa: E402
from userlm_local.runtime.backends import load_backend  # noqa: E402
from userlm_local.runtime.backends.torch import TorchBackend  # noqa: E402
from userlm_local.runtime.decode import decode_steps, drive  # noqa: E402
from userlm_local.runtime.sampling import make_sampler, preset  # noqa: E402
from userlm_local.runtime.scheduler import Scheduler  # noqa: E402
from userlm_local.util.errors import UserError  # noqa: E402

WAIT = 30  # seconds: far above any step here, so only a hang reaches it
GREEDY = make_sampler(preset("greedy"))


class FlakyBackend(TorchBackend):
    """The real backend, whose next ``extend_many`` raises when ``fail_next`` is set."""

    fail_next = False

    def extend_many(self, work):
        self.threads.add(threading.get_ident())
        if self.fail_next:
            self.fail_next = False
            self.failed_rows = len(work)
            raise RuntimeError("engine fault")
        return super().extend_many(work)


@pytest.fixture(scope="module")
def backend():
    b = load_backend(tiny_user_model())
    flaky = FlakyBackend(b.path, b.model, b.tokenizer, b.fmt, b.info)  # same weights, no second load
    flaky.threads = set()
    return flaky


@pytest.fixture
def sched(backend):
    s = Scheduler(backend)
    yield s
    s.close()


def turn(backend, text, n=6):
    """A step coroutine: prefill ``text``, then ``n`` greedy tokens (no stop id, so exactly n)."""
    def make(session=None):
        logits = yield backend.tokenize(text)
        return (yield from decode_steps(logits, sampler=GREEDY, rng=np.random.default_rng(0), max_tokens=n))
    return make


def alone(backend, make):
    return drive(make(), backend.new_session())


def hold(sched):
    """Park the scheduler thread until the returned event is set: whatever is submitted meanwhile
    is admitted in one pass, so it shares the next round."""
    go = threading.Event()

    def park():
        go.wait(WAIT)
        return "parked"
        yield  # a generator that finishes without a step, like ``call``

    return go, sched.submit(park, None)


class Victim:
    """A coroutine that parks inside its first step (after the prompt's logits) until released,
    then asks for 3 more tokens; it records the logits it got and whether it was closed."""

    def __init__(self, prompt):
        self.prompt, self.started, self.got = prompt, False, 0
        self.parked, self.go, self.closed = threading.Event(), threading.Event(), threading.Event()

    def __call__(self):
        self.started = True
        try:
            yield list(self.prompt)
            self.got += 1
            self.parked.set()
            self.go.wait(WAIT)
            for _ in range(3):
                yield [1]
                self.got += 1
        finally:
            self.closed.set()


def test_cancelled_while_queued_never_starts(backend, sched):
    go, parked = hold(sched)
    v, s = Victim(backend.tokenize("hello")), backend.new_session()
    fut = sched.submit(v, s)
    other = sched.submit(turn(backend, "how do I"), backend.new_session)
    assert fut.cancel()
    go.set()
    assert other.result(timeout=WAIT) == alone(backend, turn(backend, "how do I"))
    assert parked.result(timeout=WAIT) == "parked"
    assert not v.started and s.tokens == []  # dropped at admission: never built, never decoded


def test_cancelled_in_flight_is_dropped_before_its_next_step(backend, sched):
    v, s = Victim(backend.tokenize("hello there")), backend.new_session()
    other = sched.submit(turn(backend, "I need help with"), backend.new_session)
    fut = sched.submit(v, s)
    assert v.parked.wait(WAIT)  # the scheduler thread is inside the victim's first step
    assert fut.cancel()  # the caller gives up mid-generation
    v.go.set()
    assert other.result(timeout=WAIT) == alone(backend, turn(backend, "I need help with"))
    assert v.closed.wait(WAIT)
    assert v.got == 1 and s.tokens == v.prompt  # its [1] after the cancel was never decoded
    with pytest.raises(CancelledError):
        fut.result(timeout=0)


def test_a_full_context_fails_only_its_own_caller(backend, sched):
    full = backend.new_session()
    full.extend(list(range(5, 5 + backend.context_length - 1)))  # one position left
    go, _ = hold(sched)
    a = sched.submit(turn(backend, "write a poem"), backend.new_session)
    doomed = sched.submit(lambda: (yield [7, 8]), full)  # two ids where one fits
    b = sched.submit(turn(backend, "what is the"), backend.new_session)
    go.set()
    with pytest.raises(UserError, match="context"):
        doomed.result(timeout=WAIT)
    assert a.result(timeout=WAIT) == alone(backend, turn(backend, "write a poem"))
    assert b.result(timeout=WAIT) == alone(backend, turn(backend, "what is the"))
    assert len(full.tokens) == backend.context_length - 1  # nothing of the refused step went in
    assert sched.max_batch == 2  # a and b shared rounds; the full session was never in one


def test_submit_after_close_fails(backend, sched):
    sched.close()
    fut = sched.submit(turn(backend, "hi"), backend.new_session)
    with pytest.raises(RuntimeError, match="the engine is closed"):
        fut.result(timeout=WAIT)


def test_work_waiting_at_close_fails_instead_of_hanging(backend, sched):
    v = Victim(backend.tokenize("hello"))
    in_flight = sched.submit(v, backend.new_session())
    assert v.parked.wait(WAIT)
    queued = sched.submit(turn(backend, "hi"), backend.new_session)
    closer = threading.Thread(target=sched.close)  # close() joins the engine thread, parked in v
    closer.start()
    deadline = time.monotonic() + WAIT
    while not sched._stop and time.monotonic() < deadline:  # close() has marked the engine stopped
        time.sleep(0.01)
    v.go.set()
    for fut in (in_flight, queued):
        with pytest.raises(RuntimeError, match="the engine is closed"):
            fut.result(timeout=WAIT)
    assert v.closed.wait(WAIT)  # the in-flight coroutine was closed, not left suspended
    closer.join(WAIT)


def test_a_failing_engine_call_fails_its_round_and_the_engine_goes_on(backend, sched):
    go, _ = hold(sched)
    a = sched.submit(turn(backend, "one"), backend.new_session)
    b = sched.submit(turn(backend, "two"), backend.new_session)
    backend.fail_next = True
    go.set()
    for fut in (a, b):
        with pytest.raises(RuntimeError, match="engine fault"):
            fut.result(timeout=WAIT)
    assert backend.failed_rows == 2  # both rows were in the round that failed
    later = sched.submit(turn(backend, "three"), backend.new_session)
    assert later.result(timeout=WAIT) == alone(backend, turn(backend, "three"))


def test_call_runs_on_the_engine_thread(backend, sched):
    backend.threads.clear()
    assert sched.run(turn(backend, "hi", n=1), backend.new_session()) is not None  # one engine call
    ident = sched.call(threading.get_ident)
    assert ident != threading.get_ident()
    assert backend.threads == {ident}  # the thread that ran fn is the one that drives the engine
