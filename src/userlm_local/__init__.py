"""userlm-local: run User LMs (user simulators) locally.

The public Python API, importable from here::

    from userlm_local import load_backend, UserSimulator, Guardrails, PRESETS

Names are resolved on first use (PEP 562), so ``import userlm_local`` stays cheap; heavy engines
(torch, llama.cpp, onnxruntime-genai) are imported lazily inside the backend that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> the module that owns it
_API = {
    # models
    "load_backend": "runtime.backends", "load_tokenizer": "runtime.backends", "inspect_model": "runtime.backends",
    "Backend": "runtime.backends.base", "Session": "runtime.backends.base",
    "SamplingParams": "runtime.sampling", "PRESETS": "runtime.sampling",
    # the simulated user
    "UserSimulator": "simulation.user", "Turn": "simulation.user", "Guardrails": "simulation.guardrails",
    "RemoteUserModel": "simulation.remote_user", "open_user_model": "simulation.build",
    "converse": "simulation.converse", "EndedBy": "simulation.converse", "Outcome": "simulation.converse",
    # campaigns
    "CampaignSpec": "simulation.build", "build_campaign": "simulation.build",
    "Campaign": "simulation.campaign", "CampaignConfig": "simulation.campaign",
    "Intent": "simulation.intent_sets", "load_intents": "simulation.intent_sets",
    "TranscriptWriter": "simulation.transcripts", "MemorySink": "simulation.transcripts",
    # assistants
    "make_assistant": "assistants", "Assistant": "assistants", "AssistantError": "assistants",
    # a simulated user for other programs (the harness adapters' base)
    "SimulatedUserModel": "integrations.user", "UserReply": "integrations.user",
    # the default models, and errors meant for a user
    "default_user_model": "defaults.model", "UserError": "util.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .assistants import Assistant, AssistantError, make_assistant  # noqa: F401
    from .defaults.model import default_user_model  # noqa: F401
    from .integrations.user import SimulatedUserModel, UserReply  # noqa: F401
    from .runtime.backends import inspect_model, load_backend, load_tokenizer  # noqa: F401
    from .runtime.backends.base import Backend, Session  # noqa: F401
    from .runtime.sampling import PRESETS, SamplingParams  # noqa: F401
    from .simulation.build import CampaignSpec, build_campaign, open_user_model  # noqa: F401
    from .simulation.campaign import Campaign, CampaignConfig  # noqa: F401
    from .simulation.converse import EndedBy, Outcome, converse  # noqa: F401
    from .simulation.guardrails import Guardrails  # noqa: F401
    from .simulation.intent_sets import Intent, load_intents  # noqa: F401
    from .simulation.remote_user import RemoteUserModel  # noqa: F401
    from .simulation.transcripts import MemorySink, TranscriptWriter  # noqa: F401
    from .simulation.user import Turn, UserSimulator  # noqa: F401
    from .util.errors import UserError  # noqa: F401
