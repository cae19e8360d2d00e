"""A checkpoint to convert: config, tokenizer facts and the tensor plan, checked up front.

``open_source`` reads only headers and JSON files, so every input problem (not a Llama,
missing tokenizer, truncated shard, unknown tensor) is a one-line ``UserError`` before a
single output byte is written.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..util.errors import UserError
from ..text.tokenizer import read_json
from . import llama_arch
from ..util.files import hash_file
from .llama_arch import LlamaParams
from ..artifacts.safetensors import Checkpoint, TensorRef
from .tokenizer_meta import TokenizerMeta, read_tokenizer_meta

SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "chat_template.jinja", "special_tokens_map.json", "model.safetensors.index.json")


@dataclass
class PlannedTensor:
    """One GGUF tensor: where it comes from and how it is stored."""

    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order (rows first), as in the checkpoint
    ref: TensorRef | None = None  # None for generated tensors
    data: np.ndarray | None = None  # generated tensors (float32)
    permute: bool = False  # Q/K row permutation
    float_only: bool = False  # 1-D tensors and norms stay F32

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Source:
    path: Path
    config: dict
    params: LlamaParams
    tokenizer: TokenizerMeta
    ckpt: Checkpoint
    generation: dict
    name: str
    tensors: list[PlannedTensor] = field(default_factory=list)

    @property
    def dtype(self) -> str:
        """The checkpoint's storage type: F32, BF16, F16 or mixed."""
        d = self.ckpt.dtypes
        return d.pop() if len(d) == 1 else "mixed"

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors if t.ref is not None)

    def sampling(self) -> dict:
        return {k: self.generation[k] for k in ("temperature", "top_p", "top_k", "min_p")
                if isinstance(self.generation.get(k), (int, float))}

    def files(self) -> list[Path]:
        extra = [self.path / f for f in SOURCE_FILES if (self.path / f).is_file()]
        return sorted(set(extra + list(self.ckpt.files)))

    def file_hashes(self, progress: bool = False, stop: threading.Event | None = None) -> dict[str, str]:
        """sha256 of every source file (weights included): the artifact's provenance.

        ``stop`` (set from another thread) abandons the work with ``HashingStopped``."""
        files = self.files()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True,
                       desc="hashing source", leave=False, disable=None)
        def each(chunk: bytes) -> None:
            if stop is not None and stop.is_set():
                raise HashingStopped()
            if bar is not None:
                bar.update(len(chunk))

        out = {}
        try:
            for f in files:
                out[f.name] = hash_file(f, each=each).hexdigest()
        finally:
            if bar is not None:
                bar.close()
        return out


class HashingStopped(Exception):
    """``Source.file_hashes`` was told to stop."""


class BackgroundHashes:
    """``Source.file_hashes`` on a thread, alongside the conversion that reads the same files."""

    def __init__(self, source: Source):
        self._stop = threading.Event()
        self._result: dict[str, str] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(source,), name="hash-source", daemon=True)
        self._thread.start()

    def _run(self, source: Source) -> None:
        try:
            self._result = source.file_hashes(stop=self._stop)
        except BaseException as exc:  # handed to the thread that asks for the result
            self._error = exc

    def result(self) -> dict[str, str]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _plan(ckpt: Checkpoint, p: LlamaParams, src: Path) -> list[PlannedTensor]:
    expected = llama_arch.expected_shapes(p)
    found: dict[str, PlannedTensor] = {}
    for hf, ref in ckpt.tensors.items():
        name = llama_arch.gguf_name(hf)
        if name is None:
            if hf.endswith(llama_arch.SKIPPED):
                continue
            raise UserError(f"{src}: unexpected tensor {hf!r}: not a plain Llama checkpoint")
        if name == "output.weight" and p.tied_embeddings:
            continue  # tied: llama.cpp reuses token_embd
        if name not in expected:
            raise UserError(f"{src}: tensor {hf} does not fit config.json (layer count or biases)")
        if tuple(ref.shape) != expected[name]:
            raise UserError(f"{src}: tensor {hf} has shape {list(ref.shape)}, config.json implies "
                            f"{list(expected[name])}")
        found[name] = PlannedTensor(name, tuple(ref.shape), ref=ref, permute=llama_arch.needs_permute(hf),
                                    float_only=len(ref.shape) <= 1 or name.endswith("_norm.weight"))
    missing = [n for n in expected if n not in found]
    if missing:
        raise UserError(f"{src}: the checkpoint lacks {len(missing)} tensors (first: {missing[0]})")
    # stream in file order, so shards are read front to back
    tensors = sorted(found.values(), key=lambda t: (str(t.ref.file), t.ref.offset))
    if p.rope_type == "llama3":
        factors = llama_arch.llama3_rope_factors(p)
        tensors.insert(0, PlannedTensor("rope_freqs.weight", factors.shape, data=factors, float_only=True))
    return tensors


def open_source(path: str | Path, *, require_userlm: bool = True, name: str | None = None) -> Source:
    src = Path(path)
    if not src.exists():
        raise UserError(f"{path}: no such directory")
    config, params = llama_arch.read_config(src)
    tokenizer = read_tokenizer_meta(src, params.vocab_size, require_userlm=require_userlm)
    ckpt = Checkpoint(src)
    generation = read_json(src / "generation_config.json", missing_ok=True) or {}
    model_name = name or src.resolve().name
    if not model_name or "/" in model_name or model_name.startswith("."):
        raise UserError(f"bad model name {model_name!r} (used in file names; pass --name)")
    source = Source(src, config, params, tokenizer, ckpt, generation, model_name)
    source.tensors = _plan(ckpt, params, src)
    return source
