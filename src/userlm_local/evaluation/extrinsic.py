"""Extrinsic evaluation: the assistant under test against simulated users holding tasks (spec §3.3).

The conversations are an ordinary ``Campaign`` (concurrency, ``--resume``, locks, timeouts, the one
conversation loop), with two wrappers and no change to the campaign itself:

* ``GradingAssistant`` stands in for the assistant: it passes every message to the real one and
  grades each reply as it arrives (``grading.grade``: code in the sandbox, answers in process).  Once
  a reply is correct, or after T replies, ``finished(key)`` is true and the campaign ends the
  conversation before the next user turn (``EndedBy.ASSISTANT``): the user model never writes a turn
  nobody will answer.
* ``EvalSink`` stands between the campaign and its transcript writer: it adds each record's grades
  (``record["eval"]``) and gives the record its evaluation ending: ``solved`` at the first correct
  reply, ``max_turns`` after T graded replies.

The campaign runs with ``max_turns = T + 1`` because ``converse`` leaves its last (max_turns-th) user
turn unanswered; here that turn is never generated (``finished`` ends the conversation first), so a
conversation has at most T user turns, each answered and graded.

``single_turn`` is the baseline: the same assistant given the whole problem in one message.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..assistants import Assistant, AssistantError
from ..assistants.base import AssistantBase
from ..simulation.campaign import Campaign
from ..simulation.ray_campaign import ConversationWorker
from ..simulation.transcripts import RecordSink
from .grading import grade
from .sandbox import Limits, Sandbox
from .tasks import Task


class GradingAssistant(AssistantBase):  # lockstep: no (a sandboxed grader runs per reply)
    """``Assistant``: the real assistant, each of its replies graded; None once one is correct."""

    def __init__(self, inner: Assistant, tasks: dict[str, Task], sandbox: Sandbox, max_replies: int,
                 grader: Callable[[Task, str, Sandbox], dict] = grade):
        self.inner, self.tasks, self.sandbox, self.max_replies, self.grader = inner, tasks, sandbox, max_replies, grader
        self.kind, self.model, self.sampling = inner.kind, inner.model, inner.sampling
        self.live: dict = {}  # conversation key -> its grades so far
        self.done: dict = {}  # conversations forgotten (ended), until their record is written
        self.lock = threading.Lock()

    def reply(self, messages: list[dict], key: object = None) -> str | None:
        with self.lock:
            state = self.live.setdefault(key, {"replies": 0, "solved_at": None, "attempts": []})
        if state["solved_at"] is not None or state["replies"] >= self.max_replies:
            return None  # the conversation is over: converse ends it (EndedBy.ASSISTANT)
        text = self.inner.reply(messages, key=key)
        state["replies"] += 1
        g = self.grader(self.tasks[key[0]], text, self.sandbox)
        if g["attempt"]:
            state["attempts"].append({"turn": state["replies"], **{k: v for k, v in g.items() if k != "attempt"}})
        if g["passed"]:
            state["solved_at"] = state["replies"]
        return text

    def finished(self, key: object) -> bool:
        """The conversation is over: solved, or T replies graded (the campaign asks before each user turn)."""
        with self.lock:
            state = self.live.get(key)
        return state is not None and (state["solved_at"] is not None or state["replies"] >= self.max_replies)

    def forget(self, key: object) -> dict | None:
        with self.lock:
            state = self.live.pop(key, None)
            if state is not None:
                self.done[key] = state
        return self.inner.forget(key)

    def outcome(self, key: object) -> dict:
        with self.lock:
            return self.done.pop(key, None) or {"replies": 0, "solved_at": None, "attempts": []}


def wrap_campaign(campaign: Campaign, tasks: list[Task], sandbox: Sandbox, max_turns: int) -> GradingAssistant:
    """Put a ``GradingAssistant`` in front of the campaign's assistant; its config must allow
    ``max_turns + 1`` user turns (see the module's docstring)."""
    if campaign.config.max_turns != max_turns + 1:
        raise ValueError("the campaign needs max_turns = T + 1 for T graded replies")
    grading = GradingAssistant(campaign.assistant, {t.id: t for t in tasks}, sandbox, max_turns)
    campaign.assistant = grading
    return grading


def evaluation_of(record: dict, state: dict, max_turns: int, task: Task) -> dict:
    """The record as the evaluation reads it: cut after its last graded reply when the evaluator
    ended it, its ending, and its grades."""
    replies, solved = state["replies"], state["solved_at"]
    if solved is not None or replies >= max_turns:
        seen, cut = 0, len(record["messages"])
        for i, m in enumerate(record["messages"]):
            if m["role"] == "assistant" and m["content"] is not None:
                seen += 1
                if seen == replies:
                    cut = i + 1
                    break
        record["messages"] = record["messages"][:cut]
        record["ended_by"] = "solved" if solved is not None else "max_turns"
    record["config"] = {**record.get("config", {}), "max_turns": max_turns}
    user_turns = sum(1 for m in record["messages"] if m["role"] == "user")
    record["eval"] = {"task": task.id, "grader": task.grader.type, "success": solved is not None,
                      "turns_to_success": solved, "replies": replies, "user_turns": user_turns,
                      "attempts": state["attempts"]}
    return record


class EvalSink:
    """``RecordSink``: each finished conversation with its grades, then to the real writer."""

    def __init__(self, writer: RecordSink, grading: GradingAssistant, max_turns: int):
        self.writer, self.grading, self.max_turns = writer, grading, max_turns

    @property
    def done(self) -> set:
        return self.writer.done

    def write(self, record: dict) -> None:
        state = self.grading.outcome((record["intent_id"], record["trial"]))
        task = self.grading.tasks[record["intent_id"]]
        self.writer.write(evaluation_of(record, state, self.max_turns, task))


class EvalWorker:
    """The body of an ``eval --ray`` actor (``RayCampaign(worker=EvalWorker)``): a
    ``ConversationWorker``'s campaign with the grader in front of its assistant, and its own sandbox;
    each conversation, and each single-turn baseline, comes back to the driver graded.  The checks
    run on the actor's node, in that node's sandbox."""

    def __init__(self, spec, tasks: list[Task], limits: Limits, max_turns: int):
        self.base = ConversationWorker(spec)
        self.sandbox = Sandbox(limits)
        self.max_turns = max_turns
        self.grading = wrap_campaign(self.base.campaign, tasks, self.sandbox, max_turns)

    def converse(self, intent, trial: int) -> dict | None:
        record = self.base.converse(intent, trial)
        state = self.grading.outcome((intent.id, trial))
        return None if record is None else evaluation_of(record, state, self.max_turns, self.grading.tasks[intent.id])

    def single_turn(self, intent, trial: int) -> dict:
        return single_turn_record(self.grading.inner, self.grading.tasks[intent.id], trial,
                                  self.base.campaign.config.seed, self.sandbox)

    def setup(self) -> dict:
        return self.base.setup()

    def pid(self) -> int:
        return self.base.pid()


# ---------------------------------------------------------------- the single-turn baseline

def single_turn_record(assistant: Assistant, task: Task, trial: int, seed: int, sandbox: Sandbox) -> dict:
    """One baseline conversation: the whole problem in one message, the reply graded."""
    key = ("single-turn", task.id, trial)
    messages = [{"role": "user", "content": task.single_turn}]
    t0 = time.perf_counter()
    error, g = None, {"attempt": False, "passed": False, "status": "error", "detail": ""}
    try:
        text = assistant.reply(messages, key=key)
        messages.append({"role": "assistant", "content": text})
        g = grade(task, text, sandbox)
    except AssistantError as exc:
        error = str(exc)
    finally:
        usage = assistant.forget(key)
    return {"id": f"{task.id}/{trial}/{seed}", "intent_id": task.id, "trial": trial, "seed": seed,
            "assistant": {"kind": assistant.kind, "model": assistant.model, "sampling": assistant.sampling},
            "messages": messages, "ended_by": "error" if error else "assistant", "error": error,
            "usage": {"seconds": round(time.perf_counter() - t0, 4), "assistant": usage},
            "eval": {"task": task.id, "grader": task.grader.type, "success": bool(g["passed"]),
                     "attempt": g["attempt"], "status": g["status"], "detail": g.get("detail", "")}}


def single_turn(assistant: Assistant, tasks: list[Task], *, trials: int, seed: int, sandbox: Sandbox,
                writer: RecordSink, concurrency: int = 1, progress: Callable[[int], None] | None = None,
                stop: threading.Event | None = None) -> int:
    """Every (task, trial) of the baseline not yet in ``writer``; how many ran."""
    jobs = [(t, trial) for trial in range(trials) for t in tasks if (t.id, trial, seed) not in writer.done]
    ran, stop = 0, stop or threading.Event()

    def one(job):
        if stop is not None and stop.is_set():
            return None
        record = single_turn_record(assistant, job[0], job[1], seed, sandbox)
        writer.write(record)
        return record

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="single-turn") as pool:
        try:
            for record in pool.map(one, jobs):
                if record is not None:
                    ran += 1
                    if progress:
                        progress(ran)
        except BaseException:  # Ctrl-C, a failed write: the queued ones return at once
            stop.set()
            raise
    return ran
