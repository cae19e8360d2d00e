"""Assistant protocol and its failure type."""

from __future__ import annotations

from typing import Protocol


class AssistantError(Exception):
    """The assistant failed for this conversation (after retries); the campaign goes on."""


class Assistant(Protocol):
    """``reply`` answers the OpenAI-format turns ``messages``; ``key`` names the conversation
    (a local engine keeps its KV cache and RNG stream per key; others may ignore it), and
    ``forget(key)`` says that conversation is over."""

    kind: str  # "local" | "http" | "scripted" | "replay"
    model: str

    def reply(self, messages: list[dict], key: object = None) -> str: ...
    def forget(self, key: object) -> None: ...
