"""Assistant protocol, its failure type, and the capabilities every assistant of ours shares (``AssistantBase``)."""

from __future__ import annotations

from collections.abc import Generator
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
    sampling: dict | None  # how replies are drawn, recorded in every transcript (None: not a sampler)

    def reply(self, messages: list[dict], key: object = None) -> str: ...
    def forget(self, key: object) -> dict | None: ...


class AssistantBase:
    """What every assistant of ours shares: optional capabilities, with their defaults."""

    # ``reply_steps`` waits on nothing but its own engine steps: a campaign may run the
    # conversation on its one driving thread (``runtime.decode.drive_rounds``) instead of a
    # thread each (an HTTP endpoint or a sandboxed grader would hold every conversation up)
    lockstep = False

    def reply_steps(self, messages: list[dict], key: object = None) -> Generator:
        """``reply`` as a coroutine yielding the engine steps it needs (``runtime.decode.Step``),
        to batch them with other conversations'; by default the reply at once, no steps."""
        return self.reply(messages, key)
        yield  # unreachable: makes this a generator


def add_usage(total: dict | None, prompt: int, completion: int, cached: int | None,
              prefill_seconds: float | None = None, decode_seconds: float | None = None) -> dict:
    """``total`` plus one reply's tokens (``cached`` None: unknown, and so for the sum) and, for a
    local model, the seconds it spent reading the prompt and generating (None: not measured)."""
    total = total or {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    c = total["cached_tokens"]
    out = {"prompt_tokens": total["prompt_tokens"] + prompt, "completion_tokens": total["completion_tokens"] + completion,
           "cached_tokens": None if c is None or cached is None else c + cached}
    if prefill_seconds is not None and decode_seconds is not None:
        out["prefill_seconds"] = round(total.get("prefill_seconds", 0.0) + prefill_seconds, 6)
        out["decode_seconds"] = round(total.get("decode_seconds", 0.0) + decode_seconds, 6)
    return out
