"""The paper's baseline: an assistant LM *prompted* to play the user.

The prompt is the one of the paper's Figure 9 (as reproduced by re-implementations): the
intent without its fixed prefix, some realism instructions, the conversation so far between
``====`` rules, and ``<|endconversation|>`` as the way to stop.  The model gets it as one user
message in its *own* chat template (``LocalAssistant``), and its reply is the user's turn.

``evaluation.prompted.score_prompted`` teacher-forces the real user turns of held-out conversations under that
prompt (the prompted model's perplexity of real users) and scores P(end) as the probability of
the first token of the text ``<|endconversation|>`` (a plain string for it) as the reply's
first token: the model can only stop by starting its reply that way.
"""

from __future__ import annotations


from ..data.intents import strip_prefix
from .converse import Outcome
from .user import Turn

END_TEXT = "<|endconversation|>"

_HEAD = (
    "You are a human user interacting with an AI system to {intent}\n"
    "Users can make typos, they don't always use perfect punctuation, and they tend to be lazy because typing "
    "requires effort.\n"
    "You have to also split information across turns and not give everything at the start.\n"
    "However, you should not make overdo these things in your outputs, you must realistically act like a human.\n"
)
_FIRST = "Generate the first prompt you would say to the system to achieve your goal."
_LATER = (
    "Here is your conversation so far with the AI system:\n"
    "====================================================\n"
    "{history}\n"
    "====================================================\n"
    "If your goal of your conversation is answered by this response, respond ONLY with \"<|endconversation|>\"\n"
    "If not, generate the next prompt you would say to the system to achieve your goal."
)


def user_prompt(intent: str, history: list[dict]) -> str:
    """The prompted-simulator instruction for the next user turn after ``history``."""
    goal = strip_prefix(intent).rstrip(".") + "."
    head = _HEAD.format(intent=goal)
    if not history:
        return head + _FIRST
    lines = "\n".join(f"<{m['role']}>: {m['content']}" for m in history)
    return head + _LATER.format(history=lines)


class PromptedUser:
    """A chat model playing the user through ``user_prompt`` (generation through ``assistant``,
    a ``LocalAssistant`` that renders the model's own chat template)."""

    def __init__(self, assistant):
        self.assistant = assistant

    def next_turn(self, intent: str, history: list[dict], key: object = None) -> tuple[str, bool]:
        """(text, ended): ended when the reply is, or contains, the end string, or is empty."""
        text = self.assistant.reply([{"role": "user", "content": user_prompt(intent, history)}], key=key)
        if END_TEXT in text or not text.strip():
            return text.replace(END_TEXT, "").strip(), True
        return text.strip(), False

    def start(self, intent: str, *, key: object = None) -> "PromptedConversation":
        """One conversation, with ``SimulatedUser``'s interface (``simulation.converse`` runs it)."""
        return PromptedConversation(self, intent, key)


class PromptedConversation:
    def __init__(self, user: PromptedUser, intent: str, key: object):
        self.user, self.intent, self.key = user, intent, key
        self.history: list[dict] = []

    def next_turn(self) -> Turn:
        text, ended = self.user.next_turn(self.intent, self.history, key=self.key)
        if not ended:
            self.history.append({"role": "user", "content": text})
        return Turn(text=text, token_ids=[], ended=ended, p_end=None, outcome=Outcome.ENDED if ended else Outcome.OK)

    def add_assistant(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})

    def forget(self) -> None:
        """Free the model's state of this conversation (its KV cache)."""
        self.user.assistant.forget(self.key)
