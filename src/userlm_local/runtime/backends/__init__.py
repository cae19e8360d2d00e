"""Engines behind one session protocol.  Each backend module exports ``load(path, **opts)`` and
``inspect(path, ...)`` for its own format, and imports its heavy dependency inside, never at
package import.  The format of a path is read from its files (``model_files.model_format``)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ...artifacts.model_files import ModelInfo, model_format
from ...text.tokenizer import Tokenizer
from ...util.errors import UserError
from .base import Backend, Session  # noqa: F401
from .llama_cpp import VocabOnly
from .onnx import model_dir

BACKENDS = ("torch", "llama.cpp", "onnx")
BY_FORMAT = {"hf": "torch", "gguf": "llama.cpp", "onnx": "onnx"}
MODULES = {"torch": ".torch", "llama.cpp": ".llama_cpp", "onnx": ".onnx"}
LOADS = {"hf": "Hugging Face checkpoint directories", "gguf": "GGUF files", "onnx": "ONNX model directories"}


def _module(name: str):
    return importlib.import_module(MODULES[name], __package__)


def backend_for(path: str | Path, backend: str | None = None) -> tuple[str, str]:
    """(format, backend name) of ``path``, checked once; a clear error for a mismatch."""
    fmt = model_format(path)
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    name = backend or BY_FORMAT.get(fmt)
    if name is None:
        raise UserError(f"{path}: no backend for format {fmt!r}")
    if BY_FORMAT.get(fmt) != name:
        wants = {v: k for k, v in BY_FORMAT.items()}[name]
        raise UserError(f"{path}: the {name} backend loads {LOADS[wants]}, not {fmt}")
    return fmt, name


KV_FORMATS = ("gguf", "onnx")  # engines that allocate the KV cache at load: they take its size


def load_options(path: str | Path, *, n_ctx: int | None = None, n_seq_max: int | None = None,
                 threads: int | None = None, device: str | None = None, kv_split: bool | None = None) -> dict:
    """The load options ``path``'s format takes, from the ones a caller has: the context and the
    parallel sequences for an engine that allocates its KV cache at load (GGUF, ONNX: a file or a
    directory), llama.cpp's KV layout (``kv_split``, GGUF only), threads and device for every one.
    The one place that decides it, so no format silently loses an option (an ONNX directory once
    lost ``n_ctx`` to a ``Path.is_file()`` test)."""
    opts = {}
    fmt = model_format(path)
    if fmt in KV_FORMATS:
        opts.update({k: v for k, v in (("n_ctx", n_ctx), ("n_seq_max", n_seq_max)) if v is not None})
    if fmt == "gguf" and kv_split is not None:
        opts["kv_split"] = kv_split
    opts.update({k: v for k, v in (("threads", threads), ("device", device)) if v is not None})
    return opts


def load_backend(path: str | Path, backend: str | None = None, **opts) -> Backend:
    """Load a model with the backend that fits its format (or the one asked for)."""
    _, name = backend_for(path, backend)
    return _module(name).load(path, **opts)


def inspect_model(path: str | Path, *, allow_non_userlm: bool = False, allow_pickle: bool = False) -> ModelInfo:
    """What a model is, read from its files by the backend of its format (no weights loaded)."""
    _, name = backend_for(path)
    return _module(name).inspect(path, allow_non_userlm=allow_non_userlm, allow_pickle=allow_pickle)


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint directory, or the one inside a GGUF file."""
    fmt, _ = backend_for(path)
    if fmt == "gguf":
        return VocabOnly(path).tokenizer

    if fmt == "onnx":
        return Tokenizer.from_dir(model_dir(path)[0])
    return Tokenizer.from_dir(path)
