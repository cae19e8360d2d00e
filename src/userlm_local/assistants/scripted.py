"""A scripted assistant: the n-th reply of a file, for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


class ScriptedAssistant:
    kind = "scripted"

    def __init__(self, replies: list[str], name: str = "script"):
        if not replies:
            raise UserError(f"{name}: no replies in the script")
        self.replies = replies
        self.model = name

    @classmethod
    def from_file(cls, path: str) -> "ScriptedAssistant":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read the assistant script ({exc.__class__.__name__})") from None
        if text.lstrip().startswith("["):
            try:
                replies = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
                raise UserError(f"{path}: expected a JSON list of strings")
        else:
            replies = [line for line in text.splitlines() if line.strip()]
        return cls(replies, name=f"script:{p.name}")

    def reply(self, messages: list[dict]) -> str:
        """The reply for the k-th assistant turn (the last reply repeats when the script runs out)."""
        k = sum(1 for m in messages if m["role"] == "assistant")
        return self.replies[min(k, len(self.replies) - 1)]
