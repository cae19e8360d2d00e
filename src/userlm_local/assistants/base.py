"""Assistant protocol and its failure type."""

from __future__ import annotations

from typing import Protocol


class AssistantError(Exception):
    """The assistant failed for this conversation (after retries); the campaign goes on."""


class Assistant(Protocol):
    """``reply`` answers the OpenAI-format turns ``messages``; ``key`` names the conversation
    (a local engine keeps its KV cache and RNG stream per key; others may ignore it), and
    ``forget(key)`` says that conversation is over and returns what it cost the assistant:
    ``{"prompt_tokens", "completion_tokens", "cached_tokens"}`` summed over its replies, or ``None``
    where that is not known (a script; an endpoint that reports no usage)."""

    kind: str  # "local" | "http" | "scripted" | "replay"
    model: str

    def reply(self, messages: list[dict], key: object = None) -> str: ...
    def forget(self, key: object) -> dict | None: ...


def add_usage(total: dict | None, prompt: int, completion: int, cached: int | None) -> dict:
    """``total`` plus one reply's tokens (``cached`` None: unknown, and so for the sum)."""
    total = total or {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    c = total["cached_tokens"]
    return {"prompt_tokens": total["prompt_tokens"] + prompt, "completion_tokens": total["completion_tokens"] + completion,
            "cached_tokens": None if c is None or cached is None else c + cached}
