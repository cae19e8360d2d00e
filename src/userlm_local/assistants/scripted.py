"""A scripted assistant: the n-th reply of a file, for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

from ..util import jsonio
from ..util.errors import UserError
from ..util.files import read_bounded
from .base import AssistantBase

# The largest assistant script read (as an intents file): a pipe works, /dev/zero stops.
MAX_SCRIPT_BYTES = 256 * 2**20


class ScriptedAssistant(AssistantBase):
    kind = "scripted"
    sampling = None
    lockstep = True  # a list lookup

    def __init__(self, replies: list[str], name: str = "script"):
        if not replies:
            raise UserError(f"{name}: no replies in the script")
        self.replies = replies
        self.model = name

    @classmethod
    def from_file(cls, path: str) -> "ScriptedAssistant":
        p = Path(path)
        try:  # bounded: /dev/zero was read until a MemoryError
            text = read_bounded(path, MAX_SCRIPT_BYTES, "an assistant script").decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read the assistant script ({exc.__class__.__name__})") from None
        if text.lstrip().startswith("["):
            try:
                replies = jsonio.loads(text)
            except (json.JSONDecodeError, jsonio.TooDeep) as exc:
                raise UserError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
                raise UserError(f"{path}: expected a JSON list of strings")
            for n, r in enumerate(replies, 1):
                try:
                    r.encode("utf-8")
                except UnicodeEncodeError:  # (a tokenizer TypeError in the middle of the campaign)
                    raise UserError(f"{path}: reply {n} holds a lone surrogate (an escaped \\ud800-\\udfff), "
                                    "not valid Unicode") from None
        else:
            replies = [line for line in text.splitlines() if line.strip()]
        return cls(replies, name=f"script:{p.name}")

    def reply(self, messages: list[dict], key: object = None) -> str:
        """The reply for the k-th assistant turn (the last reply repeats when the script runs out)."""
        return nth_reply(self.replies, messages)

    def forget(self, key: object) -> None:
        return None  # a script costs no tokens


def nth_reply(replies: list[str], messages: list[dict]) -> str:
    k = sum(1 for m in messages if m["role"] == "assistant")
    return replies[min(k, len(replies) - 1)]


class ReplayAssistant(AssistantBase):
    """Each conversation's own scripted replies, by key: the bench replays the real assistant
    turns of the held-out conversation an intent came from, identically for every model."""

    kind = "replay"
    sampling = None
    lockstep = True  # a dict lookup

    def __init__(self, replies: dict, name: str = "replay"):
        if not replies or not all(replies.values()):
            raise UserError(f"{name}: every conversation needs at least one reply")
        self.replies = replies
        self.model = name

    def reply(self, messages: list[dict], key: object = None) -> str:
        if key not in self.replies:
            raise UserError(f"{self.model}: no replies for conversation {key!r}")
        return nth_reply(self.replies[key], messages)

    def forget(self, key: object) -> None:
        return None  # a script costs no tokens
