"""A simulation campaign: intents × trials, a UserLM on one side, the assistant on the other.

Each conversation has its own noise, keyed by ``(seed, intent_id, trial)`` and each draw's place,
so what it draws does not depend on which conversations ran beside it; its logits do on llama.cpp,
where a shared batch changes the floating-point sums of its rows.  So when both sides run on this
process's engines, every conversation runs on this thread in rounds (``drive_rounds``) whose
batches repeat run to run: a run is reproducible at any ``concurrency`` (bit for bit on the torch
backend whatever ran beside; on llama.cpp for the same intents, trials and ``concurrency``).  A
remote user model, an HTTP assistant or a grader runs a thread per conversation instead.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..assistants import Assistant
from ..assistants.base import AssistantBase
from ..runtime.decode import EngineSteps, at_once, drive_rounds, on_engine, run_now
from ..runtime.scheduler import Scheduler
from .guardrails import Guardrails
from .intent_sets import Intent
from ..util.interrupts import Terminated, on_sigterm
from ..runtime.sampling import SamplingParams
from .remote_user import simulator_for
from .converse import EndedBy, converse_steps
from .user import EXHAUSTED
from .transcripts import RecordSink, TranscriptWriter
from .campaign_stats import Stats, add_known

TRAINING_LENGTH = 2048


@dataclass
class CampaignConfig:
    trials: int = 1
    max_turns: int = 6
    seed: int = 0
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(1.0, 0.8))
    sampling_name: str = "paper"
    guardrails: Guardrails = field(default_factory=Guardrails.none)
    guardrails_name: str = "none"
    concurrency: int = 1
    max_new_tokens: int = 96
    context: str = "end"  # end | truncate


def pending_jobs(intents: list[Intent], trials: int, seed: int, done: set, stats: Stats) -> list[tuple[Intent, int]]:
    """The (intent, trial) pairs not yet in the transcript (``done`` keys), trial by trial;
    the others are counted as skipped."""
    out = []
    for trial in range(trials):
        for intent in intents:
            if (intent.id, trial, seed) in done:
                stats.skipped += 1
            else:
                out.append((intent, trial))
    return out


class Runner(Protocol):
    """What ``simulate`` drives: a local ``Campaign`` or a ``RayCampaign``."""

    stats: Stats
    forced: bool  # a second Ctrl-C came: the caller may exit without waiting
    on_force: Callable | None  # called by that second Ctrl-C's (or SIGTERM's) handler, if set

    def setup(self) -> dict: ...
    def run(self, intents: list[Intent], out, *, progress=None) -> Stats: ...
    def abandon(self) -> None: ...


class Campaign:
    def __init__(self, backend, assistant: Assistant, config: CampaignConfig, user_model: dict):
        self.backend = backend  # a local backend, or a RemoteUserModel (its turns are HTTP requests)
        self.assistant = assistant
        self.config = config
        self.user_model = user_model
        self.sim = simulator_for(backend, sampling=config.sampling, guardrails=config.guardrails,
                                 max_new_tokens=config.max_new_tokens)
        self.remote = self.sim.remote
        self.stats = Stats()
        self.stop = threading.Event()

    def jobs(self, intents: list[Intent], done: set) -> list[tuple[Intent, int]]:
        return pending_jobs(intents, self.config.trials, self.config.seed, done, self.stats)

    def run(self, intents: list[Intent], out: Path | RecordSink, *, resume: bool = False,
            progress=None) -> Stats:
        """Run every (intent, trial) not yet in ``out``: a path (locked and opened here, new or
        resumed) or a sink the caller opened (and closes): a ``TranscriptWriter``, a ``MemorySink``."""
        own = isinstance(out, (str, Path))
        writer = TranscriptWriter.open(out, "resume" if resume else "new") if own else out
        jobs = self.jobs(intents, writer.done)
        # what is closed at the end runs after the handler below has set ``stop``/``forced`` and
        # outside the Ctrl-C scope (a thread pool waits for its conversations there)
        with contextlib.ExitStack() as cleanup:
            if own:
                cleanup.callback(writer.close)
            try:
                with self._ctrl_c():
                    if self.lockstep:
                        self._run_rounds(jobs, writer, progress)
                    else:
                        self._run_threads(jobs, writer, progress, cleanup)
            except BaseException as exc:  # a failed write, say: the others end at their next turn
                self.stop.set()
                if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: do not wait for them
                    self.forced = True
                raise
        if self.interrupted:
            raise Terminated if self.terminated else KeyboardInterrupt
        return self.stats

    def _run_threads(self, jobs: list[tuple[Intent, int]], writer: RecordSink, progress,
                     cleanup: contextlib.ExitStack) -> None:
        """A thread per conversation, up to ``concurrency`` at once, their steps batched by a
        ``Scheduler`` as they come (a remote user model needs none)."""
        scheduler = None if self.remote else Scheduler(self.backend)
        if scheduler is not None:
            cleanup.callback(scheduler.close)
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="conv")
        cleanup.callback(lambda: pool.shutdown(wait=not self.forced, cancel_futures=True))  # before the scheduler
        pending, queue = set(), list(reversed(jobs))
        while queue or pending:
            while queue and len(pending) < self.config.concurrency and not self.stop.is_set():
                intent, trial = queue.pop()
                pending.add(pool.submit(self.converse, scheduler, writer, intent, trial))
            if not pending:
                break
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for f in finished:
                f.result()
                if progress:
                    progress(self.stats)

    @property
    def lockstep(self) -> bool:
        """Both sides run on this process's engines (or need none): every conversation runs on
        this thread, in rounds whose batches repeat run to run (``drive_rounds``), so a run at
        ``concurrency`` > 1 is reproducible too.  Otherwise (a remote user model, an HTTP
        assistant, a grader) a thread per conversation, their steps batched as they come."""
        return not self.remote and isinstance(self.assistant, AssistantBase) and self.assistant.lockstep

    def _run_rounds(self, jobs: list[tuple[Intent, int]], writer: RecordSink, progress) -> None:
        """Every conversation on this thread, in rounds (``lockstep``)."""
        def conversations():
            for intent, trial in jobs:
                if self.stop.is_set():  # a Ctrl-C: no new conversation; those in flight end at their next turn
                    return
                yield lambda intent=intent, trial=trial: self.conversation_steps(intent, trial, None, lockstep=True)

        def done(k: int, record: dict | None) -> None:
            if record is not None:
                self.record(writer, record)
            if progress:
                progress(self.stats)

        self.rounds = drive_rounds(conversations(), concurrency=self.config.concurrency, on_done=done)

    rounds: dict | None = None  # a lockstep run's engine rounds and largest batch
    interrupted = False  # a first Ctrl-C: conversations in flight end at their next turn
    terminated = False  # SIGTERM (without on_force): the same drain, then Terminated
    forced = False  # a second one: the caller may exit without waiting for them
    on_force = None  # called by the second Ctrl-C's handler itself (the CLI exits there), if set

    @contextlib.contextmanager
    def _ctrl_c(self):
        """The first Ctrl-C only sets ``stop``: conversations end at their next turn and the loop
        drains.  A KeyboardInterrupt raised at an arbitrary point of the loop could land inside
        ``concurrent.futures.wait`` while it holds futures' locks, and the workers then hang on
        them forever (seen once under load).  A second Ctrl-C interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = signal.getsignal(signal.SIGINT)
        old = signal.default_int_handler if old is None else old

        def first(signum, frame):
            self.interrupted = True
            self.stop.set()
            signal.signal(signal.SIGINT, second if self.on_force is not None else old)
            print("\nstopping: conversations in flight end at their next turn (Ctrl-C again to stop now)",
                  file=sys.stderr, flush=True)

        def second(signum, frame):  # wherever the main thread is, even inside a lock's acquire
            self.forced = True
            self.on_force()

        def term(signum, frame):  # as a second Ctrl-C where the caller can leave at once, else as a first
            if self.on_force is not None:
                self.forced = True
                self.on_force("terminated", 143)
            self.interrupted = self.terminated = True
            self.stop.set()

        signal.signal(signal.SIGINT, first)
        try:
            with on_sigterm(term):
                yield
        finally:
            signal.signal(signal.SIGINT, old)

    def converse(self, scheduler: Scheduler | None, writer: RecordSink, intent: Intent, trial: int) -> None:
        record = self.conversation(scheduler, intent, trial)
        if record is not None:
            self.record(writer, record)

    def record(self, writer: RecordSink, record: dict) -> None:
        """Append a finished conversation (the one writer) and count it."""
        writer.write(record)
        self.stats.finished(record)

    def conversation(self, scheduler: Scheduler | None, intent: Intent, trial: int) -> dict | None:
        """One conversation, run to its end on this thread: its transcript record (None when
        stopped).  Its user turns go through ``scheduler`` (None: a remote user model)."""
        return run_now(self.conversation_steps(intent, trial, scheduler))

    def conversation_steps(self, intent: Intent, trial: int, scheduler: Scheduler | None, *,
                           lockstep: bool = False) -> EngineSteps[dict | None]:
        """``conversation`` as a coroutine: with ``lockstep`` it yields every engine step of both
        sides (``drive_rounds`` batches them with other conversations'); otherwise it takes none
        (the user's turns through ``scheduler``, the assistant's replies through ``reply``)."""
        cfg, t0 = self.config, time.perf_counter()
        user = self.sim.start(intent.text, seed=cfg.seed, key=(intent.id, trial))
        messages = [{"role": "system", "content": intent.text}]
        usage = {"prefill_tokens": 0, "cached_tokens": 0, "decode_tokens": 0, "seconds": 0.0,
                 "user_seconds": 0.0, "prefill_seconds": 0.0, "decode_seconds": 0.0, "assistant_seconds": 0.0}
        key = (intent.id, trial)  # unique in a campaign (intent ids are); also the assistant's RNG stream
        finished = getattr(self.assistant, "finished", None)  # an assistant that can be done (eval's grader)

        def before_turn() -> EndedBy | None:
            if self.stop.is_set():
                return EndedBy.STOPPED
            if finished is not None and finished(key):  # no user turn the assistant would not answer
                return EndedBy.ASSISTANT
            return None if self._fits(user) else EndedBy.CONTEXT

        def on_turn(turn) -> None:
            for k in ("prefill_tokens", "cached_tokens", "decode_tokens"):
                usage[k] += turn.usage[k]
            usage["user_seconds"] += turn.usage["seconds"]
            for k in ("prefill_seconds", "decode_seconds"):  # absent for a remote user model
                usage[k] = add_known(usage[k], turn.usage.get(k))
            self._count(turn)
            content = "" if turn.outcome == EXHAUSTED else "<|endconversation|>" if turn.ended else turn.text
            messages.append({"role": "user", "content": content, "rejected": turn.rejected, "p_end": turn.p_end})

        def reply(turn_no: int):
            history = [m for m in messages if m["role"] != "system"]
            t_reply = time.perf_counter()
            try:
                if lockstep:
                    text = yield from self.assistant.reply_steps(history, key=key)
                else:
                    text = self.assistant.reply(history, key=key)
            finally:
                usage["assistant_seconds"] += time.perf_counter() - t_reply
            messages.append({"role": "assistant", "content": text})
            return text

        if lockstep:
            take_turn = lambda u: on_engine(self.backend, u.session, u.turn_steps())  # noqa: E731
        else:
            take_turn = at_once(lambda u: u.next_turn() if scheduler is None else scheduler.next_turn(u))
        try:
            ended_by, error = yield from converse_steps(user, reply, take_turn=take_turn, max_turns=cfg.max_turns,
                                                        before_turn=before_turn, on_turn=on_turn)
        finally:
            if lockstep:
                user.session.close()  # this thread is the engine's: between rounds
            elif scheduler is not None:
                scheduler.call(user.session.close)  # between engine rounds
            usage["assistant"] = self.assistant.forget(key)
            asked = any(m["role"] == "assistant" for m in messages)
            # a conversation the user ended before any reply cost the assistant nothing: that is zero
            # usage, not usage the assistant did not report (which would blank the run's summary)
            self.stats.add_assistant(usage["assistant"] if asked else {}, usage["assistant_seconds"])
        if ended_by == EndedBy.STOPPED:
            return None
        usage["seconds"] = round(time.perf_counter() - t0, 4)
        for k in ("user_seconds", "prefill_seconds", "decode_seconds", "assistant_seconds"):
            usage[k] = None if usage[k] is None else round(usage[k], 4)
        return {
            "id": f"{intent.id}/{trial}/{cfg.seed}", "intent_id": intent.id, "intent": intent.text,
            "trial": trial, "seed": cfg.seed, **self.setup(),
            "messages": messages, "ended_by": ended_by.value, "error": error, "usage": usage,
        }

    def abandon(self) -> None:
        """The process is about to exit mid-run: nothing outside it to stop (its threads end with it)."""

    def setup(self) -> dict:
        """What every record of this campaign shares: the user model, the assistant, the settings."""
        cfg = self.config
        return {"user_model": self.user_model,
                "assistant": {"kind": self.assistant.kind, "model": self.assistant.model,
                              "sampling": self.assistant.sampling},
                "config": {"sampling": cfg.sampling_name, "guardrails": cfg.guardrails_name,
                           "max_turns": cfg.max_turns, "max_new_tokens": cfg.max_new_tokens}}

    def _fits(self, user) -> bool:
        """Room for one more user turn; under ``context=truncate`` drop the oldest exchanges first."""
        conv, limit = user.conversation, self.backend.context_length
        need = lambda: len(conv.tokens) + self.config.max_new_tokens + 1  # noqa: E731
        if need() > TRAINING_LENGTH and not self.stats.long_warned:
            self.stats.long_warned = True
            print(f"warning: a conversation runs past {TRAINING_LENGTH} tokens, the UserLM training length; "
                  "its turns may degrade", file=sys.stderr)
        while need() > limit:
            if self.config.context != "truncate" or not conv.drop_oldest_exchange():
                return False
        return True

    def _count(self, turn) -> None:
        with self.stats.lock:
            self.stats.turns += 1
            self.stats.user_tokens += len(turn.token_ids)
            self.stats.cached += turn.usage["cached_tokens"]
            self.stats.prefilled += turn.usage["prefill_tokens"]
            self.stats.user_decoded += turn.usage["decode_tokens"]
            self.stats.user_seconds += turn.usage["seconds"]
            self.stats.user_prefill_seconds = add_known(self.stats.user_prefill_seconds, turn.usage.get("prefill_seconds"))
            self.stats.user_decode_seconds = add_known(self.stats.user_decode_seconds, turn.usage.get("decode_seconds"))
