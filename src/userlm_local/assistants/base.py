"""Assistant protocol and its failure type."""

from __future__ import annotations

from typing import Protocol


class AssistantError(Exception):
    """The assistant failed for this conversation (after retries); the campaign goes on."""


class Assistant(Protocol):
    kind: str  # "local" | "http" | "scripted"
    model: str

    def reply(self, messages: list[dict]) -> str: ...
