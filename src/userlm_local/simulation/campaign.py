"""A simulation campaign: intents × trials, a UserLM on one side, the assistant on the other.

Each conversation has its own RNG stream derived from ``(seed, intent_id,
trial)``, so its result does not depend on which conversations ran beside it
(bit-for-bit on the torch backend; on llama.cpp only at concurrency 1, since a
shared batch changes the floating-point summation order of its rows).
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
from ..runtime.scheduler import Scheduler
from .guardrails import Guardrails
from .intent_sets import Intent
from ..util.interrupts import Terminated, on_sigterm
from ..runtime.sampling import SamplingParams
from .remote_user import simulator_for
from .converse import EndedBy, converse
from .user import EXHAUSTED
from .transcripts import RecordSink, TranscriptWriter

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


def add_known(total: float | None, more: float | None) -> float | None:
    """A sum that becomes unknown (None) once one of its terms is."""
    return None if total is None or more is None else total + more


@dataclass
class Stats:
    done: int = 0
    skipped: int = 0
    turns: int = 0
    user_tokens: int = 0
    cached: int = 0
    prefilled: int = 0
    ended_by: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    long_warned: bool = False
    # where the time went: seconds inside the user model's turns (prefill / decode where the
    # model is local) and inside the assistant's replies, and what each produced in them
    user_decoded: int = 0
    user_seconds: float = 0.0
    user_prefill_seconds: float | None = 0.0  # None: a remote user model (not split)
    user_decode_seconds: float | None = 0.0
    assistant_seconds: float = 0.0
    assistant_usage: dict | None = field(default_factory=dict)  # summed usage; None once one is unknown
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_record(self, usage: dict) -> None:
        """Count a record's usage whose turns were run elsewhere (a Ray actor)."""
        with self.lock:
            self.user_tokens += usage["decode_tokens"]
            self.cached += usage["cached_tokens"]
            self.prefilled += usage["prefill_tokens"]
            self.user_decoded += usage["decode_tokens"]
            self.user_seconds += usage.get("user_seconds") or 0.0
            self.user_prefill_seconds = add_known(self.user_prefill_seconds, usage.get("prefill_seconds"))
            self.user_decode_seconds = add_known(self.user_decode_seconds, usage.get("decode_seconds"))
        self.add_assistant(usage.get("assistant"), usage.get("assistant_seconds") or 0.0)

    def add_assistant(self, usage: dict | None, seconds: float) -> None:
        """One conversation's assistant: ``seconds`` inside its replies, and their usage summed."""
        with self.lock:
            self.assistant_seconds += seconds
            if usage is None or self.assistant_usage is None:
                self.assistant_usage = None
                return
            for k, v in usage.items():
                cur = self.assistant_usage.get(k, 0)
                self.assistant_usage[k] = None if v is None or cur is None else cur + v

    def timing(self, wall: float) -> dict:
        """Rates measured while each side was working, and the wall time's split."""
        rate = lambda n, sec: round(n / sec, 1) if n is not None and sec else None  # noqa: E731
        a = self.assistant_usage or {}
        user = {"seconds": round(self.user_seconds, 2), "prefill_tokens": self.prefilled,
                "decode_tokens": self.user_decoded,
                "prefill_seconds": None if self.user_prefill_seconds is None else round(self.user_prefill_seconds, 2),
                "decode_seconds": None if self.user_decode_seconds is None else round(self.user_decode_seconds, 2),
                "prefill_tok_s": rate(self.prefilled, self.user_prefill_seconds),
                "decode_tok_s": rate(self.user_decoded, self.user_decode_seconds)}
        prompt_new = (a["prompt_tokens"] - a["cached_tokens"]) if a.get("cached_tokens") is not None and a else None
        asst = {"seconds": round(self.assistant_seconds, 2), "prompt_tokens": a.get("prompt_tokens"),
                "prefill_tokens": prompt_new, "completion_tokens": a.get("completion_tokens"),
                "prefill_seconds": None if a.get("prefill_seconds") is None else round(a["prefill_seconds"], 2),
                "decode_seconds": None if a.get("decode_seconds") is None else round(a["decode_seconds"], 2),
                "prefill_tok_s": rate(prompt_new, a.get("prefill_seconds")),
                "decode_tok_s": rate(a.get("completion_tokens"), a.get("decode_seconds")),
                # an endpoint or a script: tokens over the whole time of its replies
                "completion_tok_s": rate(a.get("completion_tokens"), self.assistant_seconds)}
        other = max(wall - self.user_seconds - self.assistant_seconds, 0.0)
        share = lambda x: round(x / wall, 3) if wall > 0 else None  # noqa: E731
        return {"wall_seconds": round(wall, 2), "user_model": user, "assistant": asst,
                "share": {"user_model": share(self.user_seconds), "assistant": share(self.assistant_seconds),
                          "other": share(other)}}

    def finished(self, record: dict) -> None:
        """Count a conversation written to the transcript."""
        with self.lock:
            self.done += 1
            self.ended_by[record["ended_by"]] = self.ended_by.get(record["ended_by"], 0) + 1
            if record["error"]:
                self.errors.append(f"{record['id']}: {record['error']}")


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
        scheduler = None if self.remote else Scheduler(self.backend)
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="conv")
        try:
            with self._ctrl_c():
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
        except BaseException as exc:  # a failed write, say: the others end at their next turn
            self.stop.set()
            if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: do not wait for them
                self.forced = True
            raise
        finally:
            pool.shutdown(wait=not self.forced, cancel_futures=True)
            if scheduler is not None:
                scheduler.close()
            if own:
                writer.close()
        if self.interrupted:
            raise Terminated if self.terminated else KeyboardInterrupt
        return self.stats

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
        """One conversation, run to its end: its transcript record (None when stopped)."""
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

        def reply(turn_no: int) -> str:
            history = [m for m in messages if m["role"] != "system"]
            t_reply = time.perf_counter()
            try:
                text = self.assistant.reply(history, key=key)
            finally:
                usage["assistant_seconds"] += time.perf_counter() - t_reply
            messages.append({"role": "assistant", "content": text})
            return text

        try:
            ended_by, error = converse(user, reply, max_turns=cfg.max_turns, before_turn=before_turn, on_turn=on_turn,
                                       take_turn=None if scheduler is None else scheduler.next_turn)
        finally:
            if scheduler is not None:
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
