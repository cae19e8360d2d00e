"""A conversation between a simulated user and an assistant, kept as token ids.

The ids are the truth: a generated user turn is appended as the sampled ids
(plus ``<|eot_id|>``), an assistant message is tokenized once when it arrives,
and history is never re-tokenized.  The state machine is::

    start ──(system intent)──▶ user ⇄ assistant ──(user ends)──▶ ended

While it is the user's turn, ``tokens`` ends with the open user header, so
``tokens`` is exactly the prompt the model continues.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from .prompt_format import END_CONVERSATION, ChatFormat
from ..util.errors import UserError

USER, ASSISTANT, ENDED = "user", "assistant", "ended"


class Conversation:
    def __init__(self, fmt: ChatFormat, intent: str | None):
        if intent is not None and not isinstance(intent, str):
            raise TypeError(f"the intent must be a str (or None), not {type(intent).__name__}")
        if intent is not None and not intent.strip():
            raise UserError("the intent is empty: give one sentence saying what the user wants")
        self.fmt = fmt
        self.intent = intent
        self.messages: list[dict] = []
        self.tokens: list[int] = fmt.start()
        self.spans: list[tuple[int, int]] = []  # token span of each message in self.messages
        if intent is not None:
            self.messages.append({"role": "system", "content": intent})
            self.tokens += fmt.message("system", intent)
            self.spans.append((len(fmt.start()), len(self.tokens)))
        self._open = len(self.tokens)  # where the open user header starts
        self.tokens += fmt.open_user()
        self.state = USER

    @classmethod
    def from_messages(cls, fmt: ChatFormat, messages: Iterable[Mapping[str, str]]) -> "Conversation":
        """Build from OpenAI-format messages: an optional system intent, then user/assistant turns."""
        messages = list(messages)
        intent = None
        if messages and messages[0].get("role") == "system":
            intent = messages[0].get("content")
            if not isinstance(intent, str):
                raise UserError("message 0: the system message has no text content")
            messages = messages[1:]
        conv = cls(fmt, intent)
        for i, m in enumerate(messages, start=1 if intent is not None else 0):
            role, content = m.get("role"), m.get("content")
            if not isinstance(content, str):
                raise UserError(f"message {i}: 'content' must be a string")
            if role == "user":
                conv.add_user(content, where=f"message {i}")
            elif role == "assistant":
                conv.add_assistant(content, where=f"message {i}")
            elif role == "system":
                raise UserError(f"message {i}: a system message may only come first (it is the intent)")
            else:
                raise UserError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        return conv

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    def _expect(self, state: str, what: str, where: str | None) -> None:
        if self.state == state:
            return
        prefix = f"{where}: " if where else ""
        if self.state == ENDED:
            raise UserError(f"{prefix}cannot add {what}: the user already ended the conversation")
        if where:  # a list of messages (a request, a file): said in its terms, not this class's methods
            hint = " (user and assistant messages must alternate)"
        else:
            hint = " (add the assistant's reply first)" if self.state == ASSISTANT else " (the user's turn comes first)"
        raise UserError(f"{prefix}cannot add {what}: it is the {self.state}'s turn{hint}")

    def add_user(self, text: str | None = None, *, ids: list[int] | None = None,
                 where: str | None = None) -> None:
        """Append a user turn: sampled ``ids`` (with their leading newline) or ``text``."""
        self._expect(USER, "a user turn", where)
        if ids is None:
            if text is None:
                raise ValueError("add_user needs text or ids")
            ids = self.fmt.body(text)
        else:
            text = self.fmt.tokenizer.decode(ids)
            text = text[1:] if text.startswith("\n") else text
        self.tokens += [*ids, self.fmt.ids.eot]
        self.messages.append({"role": "user", "content": text})
        self.spans.append((self._open, len(self.tokens)))
        self.state = ASSISTANT

    def end(self, ids: list[int] | None = None) -> None:
        """The user ends the conversation (emitted ``<|endconversation|>``, or an empty turn)."""
        self._expect(USER, "the end of the conversation", None)
        if ids is None:
            ids = self.fmt.body(END_CONVERSATION)
        self.tokens += [*ids, self.fmt.ids.eot]
        self.state = ENDED

    def add_assistant(self, text: str, *, where: str | None = None) -> None:
        if not isinstance(text, str):
            raise TypeError(f"the assistant's reply must be a str, not {type(text).__name__}")
        self._expect(ASSISTANT, "an assistant turn", where)
        start = len(self.tokens)
        self.tokens += self.fmt.message("assistant", text)
        self.spans.append((start, len(self.tokens)))
        self._open = len(self.tokens)
        self.tokens += self.fmt.open_user()
        self.messages.append({"role": "assistant", "content": text})
        self.state = USER

    def drop_oldest_exchange(self) -> bool:
        """Forget the oldest user+assistant pair (the intent stays); False when none is left.

        The kept turns keep their token ids: the list is cut at message boundaries.
        """
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        if self.state != USER or len(self.messages) < first + 3:
            return False  # keep at least the latest exchange
        (a, _), (_, b) = self.spans[first], self.spans[first + 1]
        cut = b - a
        del self.tokens[a:b]
        del self.messages[first:first + 2]
        del self.spans[first:first + 2]
        self.spans = [(s - cut, e - cut) if s >= b else (s, e) for s, e in self.spans]
        self._open -= cut
        return True

    def user_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]
