"""Flip a conversation into UserLM training samples (paper §2: K user turns → K+1 samples).

Sample t (1..K): intent + history before user turn t → user turn t.
Sample K+1: intent + the whole conversation → ``<|endconversation|>``.

Prompts are built with :class:`userlm_local.text.conversation.Conversation`, the runtime's own
prompt code, so training sees exactly the ids the simulator feeds at run time: no BOS (unless
the format adds one), the intent as the system message, and the open user header last.
``labels`` are aligned with ``input_ids`` (the model shifts them, Hugging Face convention):
-100 on the prompt, and on the target the body ids ``fmt.body(text)`` (the leading newline and
the text) followed by ``<|eot_id|>``; the end target is newline, ``<|endconversation|>``, eot.

Length: with ``max_len`` (default 2048, the paper's training length), a sample longer than
``max_len`` keeps the intent and drops the oldest (user, assistant) exchanges of its history
until it fits; if even the bare intent + target does not fit, the sample is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..text.prompt_format import END_CONVERSATION, ChatFormat
from ..text.conversation import Conversation
from .dialogue import Dialogue

IGNORE = -100
MAX_LEN = 2048


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    kind: str  # "turn" | "end"
    dialogue_id: str = ""
    turn: int = 0  # 0-based index of the target user turn; K for the end sample
    dropped_exchanges: int = 0  # oldest (user, assistant) pairs removed to fit max_len


def _prompt(fmt: ChatFormat, intent: str | None, history: list[dict]) -> list[int]:
    conv = Conversation(fmt, intent)
    for m in history:
        (conv.add_user if m["role"] == "user" else conv.add_assistant)(m["content"])
    return list(conv.tokens)


def _fit(fmt: ChatFormat, intent: str | None, history: list[dict], prompt: list[int],
         target: list[int], sizes: list[int], max_len: int | None) -> tuple[list[int], int] | None:
    """The prompt (possibly with the oldest exchanges dropped) so prompt + target <= max_len."""
    total = len(prompt) + len(target)
    if max_len is None or total <= max_len:
        return prompt, 0
    k = 0
    while k + 2 <= len(history):
        total -= sizes[k] + sizes[k + 1]
        k += 2
        if total <= max_len:
            trimmed = _prompt(fmt, intent, history[k:])
            return trimmed, k // 2
    return None


def flip(fmt: ChatFormat, dialogue: Dialogue, *, with_intent: bool = True,
         max_len: int | None = MAX_LEN) -> list[Sample]:
    """The training samples of one conversation, in turn order (the end sample last).

    The dialogue must alternate user/assistant starting with a user turn (``load_dialogues``
    guarantees it); if it ends with a user turn there is no end sample.
    """
    intent = dialogue.intent if with_intent and dialogue.intent else None
    conv = Conversation(fmt, intent)
    sizes: list[int] = []  # ids each message adds to the prompt
    samples: list[Sample] = []
    turn = 0

    def add(prompt: list[int], target: list[int], kind: str, upto: int) -> None:
        fitted = _fit(fmt, intent, dialogue.messages[:upto], prompt, target, sizes, max_len)
        if fitted is None:
            return
        ids, dropped = fitted
        samples.append(Sample(ids + target, [IGNORE] * len(ids) + target, kind,
                              dialogue.id, turn, dropped))

    for i, m in enumerate(dialogue.messages):
        before = len(conv.tokens)
        if m["role"] == "user":
            prompt = list(conv.tokens)
            conv.add_user(m["content"], where=f"{dialogue.id} message {i}")
            add(prompt, conv.tokens[before:], "turn", i)
            turn += 1
        else:
            conv.add_assistant(m["content"], where=f"{dialogue.id} message {i}")
        sizes.append(len(conv.tokens) - before)
    if dialogue.messages and dialogue.messages[-1]["role"] == "assistant":
        prompt = list(conv.tokens)
        target = fmt.body(END_CONVERSATION) + [fmt.ids.eot]
        add(prompt, target, "end", len(dialogue.messages))
    return samples
