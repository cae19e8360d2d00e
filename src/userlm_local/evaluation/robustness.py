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

from ..runtime.sampling import PRESETS
from ..simulation.user import UserSimulator
from ..util.errors import UserError
from .metrics.robustness import END, answers_own_question, percent_with_interval, returns_to_question
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


class SimulatorTurns:
    """A UserLM's next turn after a given history: the paper's sampling, no guardrails."""

    def __init__(self, backend, *, seed: int = 0, max_new_tokens: int = 64):
        self.backend, self.seed = backend, seed
        self.sim = UserSimulator(backend, sampling=PRESETS["paper"], max_new_tokens=max_new_tokens)

    def after(self, intent: str, history: list[dict], key: tuple) -> str:
        """The next user turn (``END`` when it ends the conversation); ``history`` teacher-forced."""
        user = self.sim.start(intent, seed=self.seed, key=key)
        try:
            for m in history:
                if m["role"] == "user":
                    user.conversation.add_user(m["content"])
                else:
                    user.add_assistant(m["content"])
            turn = user.next_turn()
        finally:
            user.session.close()
        return END if turn.ended else turn.text

    def count_tokens(self, text: str) -> int:
        return len(self.backend.tokenize(text))


class PromptedTurns:
    """The paper's baseline: an assistant model prompted to play the user (``simulation.prompted``)."""

    def __init__(self, prompted):
        self.prompted = prompted

    def after(self, intent: str, history: list[dict], key: tuple) -> str:
        text, ended = self.prompted.next_turn(intent, history, key=key)
        self.prompted.assistant.forget(key)
        return END if ended else text

    def count_tokens(self, text: str) -> int:
        return len(self.prompted.assistant.backend.tokenize(text))


def role_replies(turns, probes: list[RoleProbe], *, start: int = 0, progress: bool = True) -> list[str]:
    """The simulator's reply to each role probe (``start``: the first probe's index, which keys its
    sampling noise, so a later slice of the same probes draws as it would have in one run)."""
    return [turns.after(ROLE_INTENT.format(question=p.question),
                        [{"role": "user", "content": p.text}, {"role": "assistant", "content": p.reply}],
                        ("role", start + k))
            for k, p in enumerate(tqdm(probes, desc="role probes", unit="probe", file=sys.stderr,
                                       disable=not progress))]


def intent_replies(turns, probes: list[IntentProbe], *, start: int = 0, progress: bool = True) -> list[str]:
    """The simulator's reply to each intent probe (``start`` as in ``role_replies``)."""
    return [turns.after(INTENT_INTENT.format(question=p.question),
                        [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.suggestion}],
                        ("intent", start + k))
            for k, p in enumerate(tqdm(probes, desc="intent probes", unit="probe", file=sys.stderr,
                                       disable=not progress))]


def role_adherence(turns, probes: list[RoleProbe], *, seed: int = 0, progress: bool = True) -> dict:
    """``turns``: a ``SimulatorTurns`` or ``PromptedTurns``."""
    replies = role_replies(turns, probes, progress=progress)
    ok = [not answers_own_question(r, p.choices) for p, r in zip(probes, replies)]
    return {**percent_with_interval(ok, seed=seed), "probes": ROLE_VERSION if len(probes) else None,
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
