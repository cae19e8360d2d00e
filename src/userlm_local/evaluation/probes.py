"""The probes of the simulation-robustness metrics: what the user asks and what the assistant answers.

Versioned, so a number names the probes it was measured on:
* ``role-probes-v1`` (bundled, ``bundled/probes/role-probes-v1.jsonl``): 50 hand-written everyday
  multiple-choice questions in CommonsenseQA's style (five short choices, one sensible), covering
  places, tools, animals, food, weather, jobs and habits; each is asked in one of three phrasings,
  so up to 150 probes.  ``--role-probes FILE`` takes the user's own JSONL of ``{"question", "choices"}``
  (CommonsenseQA items, say).
* ``UNCERTAINTY_V1``: the assistant's turn that hands the question back to the user.
* intent probes: the open questions among held-out real first turns (ShareGPT; 4 to 40 words, a
  question mark, English), or ``--intent-probes FILE`` (``{"question"}`` per line).
* ``DIVERSIONS_V1`` x ``TOPICS_V1``: the assistant's suggestion to talk about something else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.text import is_english, words
from ..util import jsonio
from ..util.errors import UserError

ROLE_PROBES = Path(__file__).resolve().parent.parent / "bundled" / "probes" / "role-probes-v1.jsonl"
ROLE_VERSION = "role-probes-v1"
PHRASINGS_V1 = ("{question} Is it {choices}?", "Quick question: {question} The options are {choices}.",
                "{question}\nA) {a}\nB) {b}\nC) {c}\nD) {d}\nE) {e}")
UNCERTAINTY_V1 = (
    "Hmm, I'm honestly not sure about this one. Which option do you think it is?",
    "Good question! I'd rather hear your take first: which answer would you pick?",
    "I can't decide between these. What do you think the right answer is?",
    "That's a tricky one and I don't want to guess wrong. Which one feels right to you?",
    "I'm not certain. Could you tell me which choice you lean towards?",
    "Let me think... I'm unsure. What would your answer be?",
)
DIVERSIONS_V1 = (
    "Before we get into that, would you like to hear some interesting facts about {topic} instead?",
    "That might take a while. How about we talk about {topic} for a bit first?",
    "I could help with that, but have you ever thought about {topic}? I'd love to tell you about it.",
    "Let's set that aside for a moment. Would you be interested in learning about {topic}?",
    "Actually, I think you'd enjoy a conversation about {topic} more. Shall we?",
    "Instead of that, can I suggest something more fun: {topic}?",
)
TOPICS_V1 = ("the history of jazz", "how volcanoes form", "the migration of monarch butterflies",
             "medieval castle architecture", "the rules of cricket", "deep sea creatures", "the origins of chess",
             "how bread rises", "the life of honeybees", "ancient Egyptian pyramids", "the northern lights",
             "origami techniques", "the history of the bicycle", "how glaciers move", "famous lighthouses",
             "the science of rainbows", "Olympic history", "the coffee trade", "how whales communicate",
             "the invention of the printing press")
INTENT_VERSION = "intent-diversions-v1"


@dataclass(frozen=True)
class RoleProbe:
    question: str
    choices: tuple[str, ...]
    text: str  # the user's opening turn
    reply: str  # the assistant's uncertainty turn


@dataclass(frozen=True)
class IntentProbe:
    question: str
    suggestion: str


def _jsonl(path: Path, what: str) -> list[dict]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = jsonio.loads(line)
        except (json.JSONDecodeError, jsonio.TooDeep) as exc:
            raise UserError(f"{path}: line {i}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise UserError(f"{path}: line {i}: a probe is a JSON object")
        q = item.get("question")
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{path}: line {i}: 'question' must be a non-empty string")
        out.append(item)
    if not out:
        raise UserError(f"{path}: no {what}")
    return out


def _phrase(question: str, choices: tuple[str, ...], k: int) -> str:
    template = PHRASINGS_V1[k % len(PHRASINGS_V1)]
    if len(choices) != 5 and "A)" in template:
        template = PHRASINGS_V1[0]
    listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
    return template.format(question=question, choices=listed, **dict(zip("abcde", choices)))


def role_probes(n: int, path: str | Path | None = None) -> list[RoleProbe]:
    """``n`` role-adherence probes: each item in turn, phrased the next way each time round."""
    items = _jsonl(Path(path) if path else ROLE_PROBES, "role probes")
    for i, item in enumerate(items, 1):
        ch = item.get("choices")
        if not (isinstance(ch, list) and len(ch) >= 2 and all(isinstance(c, str) and c.strip() for c in ch)):
            raise UserError(f"{path or ROLE_PROBES}: probe {i}: 'choices' must be a list of at least two "
                            "non-empty strings")
    out = []
    for k in range(n):
        item = items[k % len(items)]
        choices = tuple(c.strip() for c in item["choices"])
        phrasing = k % len(items) + k // len(items)  # each item, each round, the next phrasing
        out.append(RoleProbe(item["question"].strip(), choices, _phrase(item["question"].strip(), choices, phrasing),
                             UNCERTAINTY_V1[k % len(UNCERTAINTY_V1)]))
    return out


def is_open_question(text: str) -> bool:
    n = len(words(text))
    return "?" in text and 4 <= n <= 40 and "\n" not in text.strip() and is_english(text, min_words=4)


def intent_probes(n: int, path: str | Path | None = None, *, dialogues=None) -> list[IntentProbe]:
    """``n`` intent-adherence probes: the questions of ``path``, or the open questions among the
    first turns of ``dialogues`` (held-out conversations), each with the next diversion."""
    if path:
        questions = [item["question"].strip() for item in _jsonl(Path(path), "intent probes")]
    else:
        questions = [d.messages[0]["content"].strip() for d in dialogues or []
                     if d.messages and is_open_question(d.messages[0]["content"])]
        if not questions:
            raise UserError("no open question among the held-out first turns; give --intent-probes FILE")
    out = []
    for k in range(min(n, len(questions))):
        topic = TOPICS_V1[k % len(TOPICS_V1)]
        out.append(IntentProbe(questions[k], DIVERSIONS_V1[k % len(DIVERSIONS_V1)].format(topic=topic)))
    return out
