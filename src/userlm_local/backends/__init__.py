"""Engines behind one session protocol.  Each module exports ``load(path, **opts)``
and imports its heavy dependency inside, never at package import."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import Backend, Session  # noqa: F401

BACKENDS = ("torch", "llama.cpp")


def load_backend(path: str | Path, backend: str | None = None, **opts) -> Backend:
    """Load a model with the backend that fits its format (or the one asked for)."""
    from ..models import model_format

    fmt = model_format(path)
    name = backend or {"hf": "torch", "gguf": "llama.cpp"}.get(fmt)
    if name == "llama.cpp":
        if fmt != "gguf":
            raise UserError(f"{path}: the llama.cpp backend loads GGUF files, not {fmt}")
        from . import llama_cpp

        return llama_cpp.load(path, **opts)
    if name == "torch":
        if fmt != "hf":
            raise UserError(f"{path}: the torch backend loads Hugging Face checkpoint directories, not {fmt}")
        from . import torch as torch_backend

        return torch_backend.load(path, **opts)
    raise UserError(f"{path}: no backend for format {fmt!r}" if backend is None
                    else f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
