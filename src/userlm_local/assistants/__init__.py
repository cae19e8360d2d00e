"""The assistant under test, behind one small interface: ``reply(messages, key=None) -> str`` and
``forget(key)`` (see ``base.Assistant``).

``messages`` are OpenAI-format user/assistant turns; the simulated user's intent
(its system message) is never shown to the assistant.
"""

from __future__ import annotations

from .base import Assistant, AssistantError  # noqa: F401
from .local import LocalAssistant
from .openai_http import OpenAIAssistant
from .scripted import ScriptedAssistant


def make_assistant(spec: str, **opts) -> Assistant:
    """``script:FILE`` | ``http(s)://.../v1`` | a local model path (GGUF or HF directory)."""
    if spec.startswith("script:"):
        return ScriptedAssistant.from_file(spec[len("script:"):])
    if spec.startswith(("http://", "https://")):
        return OpenAIAssistant(spec, **{k: v for k, v in opts.items() if k in OpenAIAssistant.OPTIONS})

    return LocalAssistant.load(spec, **{k: v for k, v in opts.items() if k in LocalAssistant.OPTIONS})
