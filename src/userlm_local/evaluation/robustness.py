"""Running the simulation-robustness probes on a user model: role adherence and intent adherence
(spec §3.2 (5), (6)); the texts and their verdicts are ``metrics.robustness``, the probes ``probes``.

Each probe is a short conversation: the intent, the user's opening question (teacher-forced, as
if the simulator had asked it), the assistant's fixed turn, then one sampled user turn (the paper's
sampling, no guardrails, as intrinsic evaluation runs)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from tqdm import tqdm

from ..runtime.sampling import PRESETS, Noise
from ..runtime.decode import drive_many
from ..simulation.user import SimulatedUser, UserSimulator
from ..text.conversation import Conversation
from ..util.errors import UserError
from .metrics.robustness import END, ROLE_RULE, answers_own_question, percent_with_interval, returns_to_question
from .probes import INTENT_VERSION, ROLE_VERSION, IntentProbe, RoleProbe

ROLE_INTENT = "You are a user chatting with an assistant language model to find out the answer to a question: {question}"
INTENT_INTENT = "You are a user chatting with an assistant language model to get an answer to your question: {question}"
JUDGE_PROMPT = (  # the paper's Figure 10, as two re-implementations reproduce it
    "You are given a conversation between a user and an AI system.\n"
    "User Question: {question}\n"
    "AI Response: {suggestion}\n"
    "User Reply: {reply}\n"
    "Classify if the user accepted the AI's suggestion or repeated their original question.\n"
    "If the user's reply repeats or rephrases their original question, output only: REFUSED\n"
    "If the user's reply follows the AI's suggestion, output only: ACCEPTED"
)


def replay(conv: Conversation, history: list[dict]) -> Conversation:
    """``history``'s messages teacher-forced onto ``conv``."""
    for m in history:
        (conv.add_user if m["role"] == "user" else conv.add_assistant)(m["content"])
    return conv


def context_needed(fmt, requests: list[tuple[str, list[dict], tuple]], max_new_tokens: int) -> int:
    """The most tokens one request's conversation can reach: its prompt plus a whole turn."""
    prompts = (len(replay(Conversation(fmt, intent), history).tokens) for intent, history, _ in requests)
    return max(prompts, default=0) + max_new_tokens + 1


class Turns:
    """A simulator's next turn after a teacher-forced history: what the first turns and the probes ask."""

    def after(self, intent: str, history: list[dict], key: tuple) -> str:
        """The next user turn (``END`` when it ends the conversation)."""
        raise NotImplementedError

    def many(self, requests: list[tuple[str, list[dict], tuple]], *, desc: str, unit: str = "turn",
             progress: bool = True) -> list[str]:
        """``after(intent, history, key)`` of each request, in order: one at a time here; a simulator
        on a local engine batches them (``SimulatorTurns``).  Each draw is keyed by its request's
        ``key``, not by its place among the others."""
        return [self.after(*r) for r in tqdm(requests, desc=desc, unit=unit, file=sys.stderr, disable=not progress)]

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError


class SimulatorTurns(Turns):
    """A UserLM's next turn after a given history: the paper's sampling, no guardrails.
    ``concurrency`` > 1 (at most the backend's sequences) runs ``many`` that many at a time, their
    decode steps batched on one engine (``runtime.decode.drive_many``): first turns are decode-bound,
    and eight at once took about half the time of one at a time (bench/batch_turns.py).  The same
    ``concurrency`` draws the same texts every run; another can differ in a few tokens where a draw
    was close, as llama.cpp's batched arithmetic is not bit-identical to one sequence's."""

    def __init__(self, backend, *, seed: int = 0, max_new_tokens: int = 64, concurrency: int = 1):
        self.backend, self.seed, self.concurrency = backend, seed, concurrency
        self.sim = UserSimulator(backend, sampling=PRESETS["paper"], max_new_tokens=max_new_tokens)

    def _user(self, session, intent: str, history: list[dict], key: tuple) -> SimulatedUser:
        """A user on ``session`` with ``history`` teacher-forced, its noise keyed by ``key`` (as
        ``UserSimulator.start``)."""
        user = SimulatedUser(self.sim, Conversation(self.sim.fmt, intent), session, Noise.for_(self.seed, *key))
        replay(user.conversation, history)  # after the user is made: its first turn keeps noise index 0
        return user

    def after(self, intent: str, history: list[dict], key: tuple) -> str:
        session = self.backend.new_session()
        try:
            turn = self._user(session, intent, history, key).next_turn()
        finally:
            session.close()
        return END if turn.ended else turn.text

    def _steps(self, session, intent: str, history: list[dict], key: tuple):
        """``after`` as a step coroutine on ``session`` (closed at its end)."""
        try:
            turn = yield from self._user(session, intent, history, key).turn_steps()
        finally:
            session.close()
        return END if turn.ended else turn.text

    def many(self, requests, *, desc: str, unit: str = "turn", progress: bool = True) -> list[str]:
        if self.concurrency <= 1 or len(requests) < 2:
            return super().many(requests, desc=desc, unit=unit, progress=progress)
        jobs = [lambda s, r=r: self._steps(s, *r) for r in requests]
        with tqdm(total=len(requests), desc=desc, unit=unit, file=sys.stderr, disable=not progress) as bar:
            return drive_many(self.backend, jobs, concurrency=self.concurrency, on_done=lambda k, _: bar.update())

    def count_tokens(self, text: str) -> int:
        return len(self.backend.tokenize(text))


class PromptedTurns(Turns):
    """The paper's baseline: an assistant model prompted to play the user (``simulation.prompted``)."""

    def __init__(self, prompted):
        self.prompted = prompted

    def after(self, intent: str, history: list[dict], key: tuple) -> str:
        text, ended = self.prompted.next_turn(intent, history, key=key)
        self.prompted.assistant.forget(key)
        return END if ended else text

    def count_tokens(self, text: str) -> int:
        return len(self.prompted.assistant.backend.tokenize(text))


def role_requests(probes: list[RoleProbe], *, start: int = 0) -> list[tuple[str, list[dict], tuple]]:
    """Each role probe as ``(intent, history, key)`` (``start``: the first probe's index, which keys
    its sampling noise, so a later slice of the same probes draws as it would have in one run)."""
    return [(ROLE_INTENT.format(question=p.question),
             [{"role": "user", "content": p.text}, {"role": "assistant", "content": p.reply}], ("role", start + k))
            for k, p in enumerate(probes)]


def intent_requests(probes: list[IntentProbe], *, start: int = 0) -> list[tuple[str, list[dict], tuple]]:
    """Each intent probe as ``(intent, history, key)`` (``start`` as in ``role_requests``)."""
    return [(INTENT_INTENT.format(question=p.question),
             [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.suggestion}],
             ("intent", start + k))
            for k, p in enumerate(probes)]


def role_replies(turns: Turns, probes: list[RoleProbe], *, start: int = 0, progress: bool = True) -> list[str]:
    """The simulator's reply to each role probe."""
    return turns.many(role_requests(probes, start=start), desc="role probes", unit="probe", progress=progress)


def intent_replies(turns: Turns, probes: list[IntentProbe], *, start: int = 0, progress: bool = True) -> list[str]:
    """The simulator's reply to each intent probe."""
    return turns.many(intent_requests(probes, start=start), desc="intent probes", unit="probe", progress=progress)


def role_adherence(turns, probes: list[RoleProbe], *, seed: int = 0, progress: bool = True) -> dict:
    """``turns``: a ``SimulatorTurns`` or ``PromptedTurns``."""
    replies = role_replies(turns, probes, progress=progress)
    ok = [not answers_own_question(r, p.choices) for p, r in zip(probes, replies)]
    return {**percent_with_interval(ok, seed=seed), "probes": ROLE_VERSION if len(probes) else None, "rule": ROLE_RULE,
            "examples": [{"user": p.text, "assistant": p.reply, "reply": r, "adherent": a}
                         for p, r, a in list(zip(probes, replies, ok))[:5]]}


def intent_adherence(turns, probes: list[IntentProbe], *, seed: int = 0, judge: str | None = None,
                     judge_model: str | None = None, progress: bool = True) -> dict:
    replies = intent_replies(turns, probes, progress=progress)
    # a user who ends the conversation neither returns to the question nor follows the suggestion:
    # those replies are counted apart, and adherence is over the replies that go on
    going = [(p, r) for p, r in zip(probes, replies) if r != END]
    lexical = [returns_to_question(r, p.question, p.suggestion) for p, r in going]
    out = {"judge": "lexical"}
    verdicts = lexical
    if judge:
        verdicts = [llm_judge(judge, p, r, model=judge_model) for p, r in going]
        agree = sum(a == b for a, b in zip(lexical, verdicts))
        out = {"judge": f"{judge} ({judge_model or 'its default model'}), the paper's Figure-10 prompt, temperature 0",
               "lexical_agreement": agree / len(verdicts) if verdicts else None}
    return {**percent_with_interval(verdicts, seed=seed), **out, "probes": INTENT_VERSION,
            "ended": sum(r == END for r in replies), "asked": len(probes),
            "examples": [{"question": p.question, "assistant": p.suggestion, "reply": r, "adherent": a}
                         for (p, r), a in list(zip(going, verdicts))[:5]]}


def llm_judge(url: str, probe: IntentProbe, reply: str, *, model: str | None = None, timeout: float = 60.0) -> bool:
    """True (REFUSED: back to the question) or False (ACCEPTED) from an OpenAI-compatible chat model."""
    body = {"model": model or "", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": JUDGE_PROMPT.format(question=probe.question,
                                                                         suggestion=probe.suggestion, reply=reply)}]}
    req = urllib.request.Request(url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer = json.loads(r.read(1 << 20))
        text = answer["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"--judge {url}: no usable answer ({getattr(exc, 'reason', exc)})") from None
    label = (text or "").strip().upper()
    if label.startswith("REFUSED"):
        return True
    if label.startswith("ACCEPTED"):
        return False
    raise UserError(f"--judge {url}: answered neither REFUSED nor ACCEPTED: {text.strip()[:80]!r}")
