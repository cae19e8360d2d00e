"""What a model path is, read from its files without loading any weights: its format, and
the facts every format reports (``ModelInfo``).  Each backend inspects its own format
(``backends.torch.inspect``, ``backends.llama_cpp.inspect``); ``backends.inspect_model``
dispatches.  Nothing here imports a backend.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .prompt_format import SpecialIds
from .errors import UserError
from .tokenizer import read_json

LLAMA_ARCHS = {"LlamaForCausalLM"}


def model_format(path: str | Path) -> str:
    """'hf' for a checkpoint directory, 'gguf' for a GGUF file, 'onnx' for an ONNX Runtime GenAI
    directory (``genai_config.json``); a conversion's output directory says in its manifest (read
    from its files, never from its name).  A path is read once per process while it is unchanged: commands ask for the
    format of the same path several times (options, backend choice, inspection)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise UserError(f"{path}: no such file or directory") from None
    return _format(str(p.resolve()), st.st_mtime_ns, st.st_size, str(path))


@functools.lru_cache(maxsize=64)
def _format(resolved: str, mtime_ns: int, size: int, shown: str) -> str:
    p, path = Path(resolved), shown
    if p.is_dir():
        manifest = read_json(p / "manifest.json", missing_ok=True)
        if isinstance(manifest, dict) and isinstance(manifest.get("format"), str):
            return manifest["format"]
        if (p / "genai_config.json").is_file():
            return "onnx"
        if (p / "config.json").is_file():
            return "hf"
        raise UserError(f"{path}: not a model directory (no config.json)")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    raise UserError(f"{path}: not a model (expected a checkpoint directory, a GGUF file or an ONNX model directory)")


@dataclass
class ModelInfo:
    path: str
    format: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tokenizer_size: int
    context_length: int
    rope: dict
    dtype: str | None
    weights: list[str]
    special: SpecialIds | None
    is_userlm: bool
    template_sha256: str | None
    template_is_userlm: bool
    add_bos_token: bool
    eos: dict
    warnings: list[str] = field(default_factory=list)
    sampling: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def weight_files(path: Path, allow_pickle: bool) -> list[str]:
    st = sorted(p.name for p in path.glob("*.safetensors"))
    if st:
        for name in st:
            check_complete(path / name)
        return st
    pickled = sorted(p.name for p in path.glob("*.bin"))
    if pickled and not allow_pickle:
        raise UserError(
            f"{path}: weights are pickled .bin files, which can run code when loaded; "
            "convert them to safetensors, or pass --allow-pickle if you trust them"
        )
    if pickled:
        return pickled
    raise UserError(f"{path}: no weights (*.safetensors) in the checkpoint directory")


def check_complete(path: Path) -> None:
    """A safetensors file holds every byte its header promises (an interrupted download does not);
    reads only the header."""
    from .convert.safetensors_reader import read_header

    header, data_start = read_header(path)
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"{path}: corrupt safetensors header") from None
    size = path.stat().st_size
    if data_start + end > size:
        raise UserError(f"{path}: truncated: its tensors end at byte {data_start + end} but the file has {size} "
                        "bytes (incomplete download?)")


def rope_facts(config: dict) -> dict:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    return {
        "type": params.get("rope_type") or params.get("type") or "default",
        "theta": params.get("rope_theta", config.get("rope_theta", 10000.0)),
        **{k: v for k, v in params.items() if k not in ("rope_type", "type", "rope_theta")},
    }


def check_llama_config(config: dict, path: str | Path, need: str) -> list[str]:
    """The architectures of a Llama config; a clear error for anything else."""
    if not isinstance(config, dict):
        raise UserError(f"{path}/config.json: not a JSON object")
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or not LLAMA_ARCHS.intersection(archs):
        raise UserError(f"{path}: not a Llama checkpoint (model_type={config.get('model_type')!r}, "
                        f"architectures={archs}); {need}")
    return archs
